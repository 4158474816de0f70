/**
 * The ingress (docs/architecture.md#layers-and-processes, docs/http-api.md): a
 * stateless HTTP API over Postgres and the coordination backend. This file
 * only wires things: request ids, body parsing, the one error handler, auth
 * and rate limits for /v1, routes.
 */
import { randomUUID } from "node:crypto";
import { STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import Fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from "fastify";
import type { Embedder } from "../agent/embeddings.js";
import type { PriceTable } from "../cost/pricing.js";
import { instrumentFastify } from "../observability/http.js";
import type { Metrics } from "../observability/metrics.js";
import type { Tracing } from "../observability/tracing.js";
import type { Settings } from "../config/config.js";
import type { Coordination, RateLimitRule } from "../coord/types.js";
import { CapstanError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { Db } from "../state/db.js";
import { createAuthenticator, type AuthOptions } from "./auth.js";
import type { IngressContext } from "./context.js";
import { createIngressMetrics } from "./metrics.js";
import { jsonDepthProblem } from "./json-depth.js";
import { clientErrorOf, problemFor } from "./problem.js";
import { createRateLimitCheck, DEFAULT_RATE_LIMIT, type RedisFailurePolicy } from "./ratelimit.js";
import { cacheRoutes } from "./routes/cache.js";
import { eventRoutes } from "./routes/events.js";
import { memoryRoutes } from "./routes/memories.js";
import { opsRoutes } from "./routes/ops.js";
import { runRoutes } from "./routes/runs.js";
import { threadRoutes } from "./routes/threads.js";
import { traceRequests } from "./tracing.js";
import { usageRoutes } from "./routes/usage.js";
import { createRunWatchHub } from "./run-watch.js";
import { LIMITS } from "./schemas.js";
import { DEFAULT_SSE, type SseOptions } from "./sse.js";

export interface IngressDeps {
  db: Db;
  coord: Coordination;
  settings: Settings;
  logger: Logger;
  /** Names of the loaded agents: a run for any other agent is refused (`unknown_agent`). */
  agentNames: () => string[];
  /** Per-API-key limit shared by all replicas; `false` disables it. Default 600 requests/min. */
  rateLimit?: RateLimitRule | false;
  /** When the coordination backend fails: let requests through ("open", default) or refuse them (503). */
  redisFailurePolicy?: RedisFailurePolicy;
  auth?: AuthOptions;
  sse?: Partial<SseOptions>;
  /** Most SSE streams + /wait calls open at once in this process. Default 10,000. */
  maxWatchers?: number;
  /** `/wait` re-reads the run at least this often. Default 5,000 ms. */
  waitPollMs?: number;
  /** Readiness probe timeout per backend. Default 2,000 ms. */
  probeTimeoutMs?: number;
  /**
   * The process metrics (src/observability): served at /metrics, with the
   * ingress series added. Default: a private set for this app.
   */
  metrics?: Metrics;
  /** The price table (`models.prices`): `GET /v1/usage` and a run's usage then carry estimated costs. */
  prices?: PriceTable;
  /**
   * Embeds memory texts and search queries (the same embedder the workers
   * use). Without one, the /v1/memories routes answer 501 `not_implemented`.
   */
  embedder?: Embedder;
  /** OpenTelemetry tracing (src/observability/tracing.ts); absent when disabled. */
  tracing?: Tracing;
  /**
   * Told of every route as it is registered (`url` with its `/v1` prefix):
   * test/ingress/openapi.test.ts checks each one against /openapi.json.
   */
  onRoute?: (route: { method: string | string[]; url: string }) => void;
}

const MAX_PARAM_CHARS = 3 * 1024;
const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,128}$/;

function sendProblem(err: unknown, req: FastifyRequest, reply: FastifyReply): FastifyReply {
  const p = problemFor(err, req.id);
  if (p.serverFault) req.log.error({ err }, "request failed");
  else req.log.debug({ code: p.body.code }, "request refused");
  return reply.code(p.status).headers(p.headers).type("application/problem+json").send(p.body);
}

function answerClientError(err: Error & { code?: string }, socket: Socket, log: Logger): void {
  if (err.code === "ECONNRESET" || socket.destroyed) return;
  log.debug({ code: err.code }, "malformed HTTP request refused");
  if (!socket.writable) {
    socket.destroy(err);
    return;
  }
  const p = problemFor(clientErrorOf(err), randomUUID());
  const body = JSON.stringify(p.body);
  const headers = Object.entries(p.headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join("");
  // end(), not destroy(): the answer is flushed before the connection closes.
  socket.end(
    `HTTP/1.1 ${p.status} ${STATUS_CODES[p.status] ?? ""}\r\n` +
      `content-type: application/problem+json; charset=utf-8\r\n` +
      `content-length: ${Buffer.byteLength(body)}\r\nx-request-id: ${p.body.request_id}\r\n` +
      `connection: close\r\n${headers}\r\n${body}`,
  );
}

export async function buildIngress(deps: IngressDeps): Promise<FastifyInstance> {
  const logger = deps.logger.child({ component: "ingress" });
  const hub = createRunWatchHub(deps.db, logger, { maxWatchers: deps.maxWatchers ?? 10_000 });
  const { metrics, release: releaseMetrics } = createIngressMetrics(deps.metrics, () => hub.size());
  const shutdown = new AbortController();
  const longRequests = new Set<Promise<unknown>>();
  const ctx: IngressContext = {
    db: deps.db,
    coord: deps.coord,
    settings: deps.settings,
    logger,
    metrics,
    hub,
    agentNames: deps.agentNames,
    sse: { ...DEFAULT_SSE, ...deps.sse },
    shutdown: shutdown.signal,
    waitPollMs: deps.waitPollMs ?? 5_000,
    track(work) {
      const settled = work.then(
        () => undefined,
        () => undefined,
      );
      longRequests.add(settled);
      void settled.then(() => longRequests.delete(settled));
      return work;
    },
  };
  const authFailures = deps.settings.http.authFailuresPerMinute;
  const auth = createAuthenticator(deps.db, {
    ...deps.auth,
    ...(authFailures > 0
      ? {
          failures: {
            limiter: deps.coord.rateLimiter,
            rule: { points: authFailures, durationMs: 60_000 },
            onRefused: () => metrics.base.rateLimitRejections.inc({ scope: "auth_failures" }),
          },
        }
      : {}),
  });
  const rule = deps.rateLimit === undefined ? DEFAULT_RATE_LIMIT : deps.rateLimit;
  const rateCheck =
    rule === false
      ? undefined
      : createRateLimitCheck({
          limiter: deps.coord.rateLimiter,
          rule,
          policy: deps.redisFailurePolicy ?? "open",
          logger,
          metrics,
        });

  // Typed as Fastify's base logger so the instance has the plain FastifyInstance type.
  const fastifyLogger: FastifyBaseLogger = logger;
  const app = Fastify({
    loggerInstance: fastifyLogger,
    bodyLimit: deps.settings.http.bodyLimitBytes,
    // The client address (`req.ip`, per-client auth-failure limits) behind proxies the operator trusts.
    trustProxy: deps.settings.http.trustProxy,
    // Honour a sane caller-supplied id (tracing across services), else mint one.
    genReqId: (req) => {
      const h = req.headers["x-request-id"];
      return typeof h === "string" && REQUEST_ID_RE.test(h) ? h : randomUUID();
    },
    // One log line per request comes from our onResponse hook instead.
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: "requestId" }),
    // Closing is answered by our own hook below, as problem+json.
    return503OnClosing: false,
    // HEAD on an event stream would hold a watcher for nothing: no implicit HEAD routes.
    exposeHeadRoutes: false,
    // Memory namespaces and keys (≤ 256 characters) travel percent-encoded in paths.
    routerOptions: { maxParamLength: MAX_PARAM_CHARS },
    // Errors the router answers before any hook (a bad percent-escape, an overlong path
    // segment) go through the one problem handler too.
    frameworkErrors: (err, req, reply) => {
      reply.header("x-request-id", req.id);
      void sendProblem(err, req, reply);
    },
    // Bytes Node's HTTP parser refuses never become a request: answered on the socket, same shape.
    clientErrorHandler: (err, socket) => answerClientError(err, socket, logger),
  });

  const onRoute = deps.onRoute;
  if (onRoute) app.addHook("onRoute", (r) => onRoute({ method: r.method, url: r.url }));
  app.decorateRequest("principal", null);
  // First of all hooks: the request span also covers requests the hooks below refuse.
  traceRequests(app, deps.tracing);

  // Only JSON bodies exist in this API: every other media type is 415. An
  // empty body counts as absent (POST /cancel from clients that always send
  // Content-Type: application/json).
  app.removeAllContentTypeParsers();
  const defaultJson = app.getDefaultJsonParser("error", "error");
  // Nesting is bounded on the raw text, before anything recursive sees the value.
  app.addContentTypeParser("application/json", { parseAs: "string" }, (req, body, done) => {
    const text = typeof body === "string" ? body : body.toString("utf8");
    if (text.trim() === "") {
      done(null, undefined);
      return;
    }
    const deep = jsonDepthProblem(text, LIMITS.jsonDepth);
    if (deep) {
      done(
        new CapstanError("validation_failed", `invalid request: ${deep.field}: nested too deeply`, {
          fields: [{ field: deep.field, message: `JSON nested deeper than ${LIMITS.jsonDepth} levels` }],
        }),
      );
      return;
    }
    void defaultJson(req, text, done);
  });

  app.setErrorHandler((err, req, reply) => sendProblem(err, req, reply));
  app.setNotFoundHandler((req, reply) =>
    sendProblem(new CapstanError("not_found", `no route ${req.method} ${req.url.split("?")[0]}`), req, reply),
  );

  app.addHook("onRequest", async (req, reply) => {
    reply.header("x-request-id", req.id);
    if (shutdown.signal.aborted) {
      reply.header("connection", "close");
      throw new CapstanError("server_busy", "the server is shutting down; retry on another replica");
    }
  });
  instrumentFastify(app, metrics.base);
  app.addHook("onResponse", async (req, reply) => {
    const route = req.routeOptions.url ?? "unmatched";
    const level =
      reply.statusCode >= 500 ? "warn" : route === "/healthz" || route === "/readyz" ? "debug" : "info";
    req.log[level](
      { method: req.method, url: req.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) },
      "request",
    );
  });

  // Shutdown: SSE streams end with a retry hint and /wait answers at once.
  // Waiting for them here (briefly) means their connections are idle by the
  // time Fastify closes the server, which closes idle connections; then the
  // remaining in-flight requests drain.
  app.addHook("preClose", async () => {
    shutdown.abort();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(longRequests),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, 2_000);
      }),
    ]);
    clearTimeout(timer);
  });
  app.addHook("onClose", async () => {
    releaseMetrics();
    await hub.close();
  });

  opsRoutes(app, ctx, { probeTimeoutMs: deps.probeTimeoutMs ?? 2_000 });

  await app.register(
    async (v1) => {
      v1.addHook("onRequest", async (req, reply) => {
        const principal = await auth.authenticate(req.headers.authorization, req.ip);
        req.principal = principal;
        req.log = req.log.child({ tenantId: principal.tenantId });
        if (rateCheck) await rateCheck(principal.keyId, reply);
      });
      threadRoutes(v1, ctx);
      runRoutes(v1, ctx, { prices: deps.prices });
      eventRoutes(v1, ctx);
      usageRoutes(v1, ctx, { prices: deps.prices });
      cacheRoutes(v1, ctx);
      memoryRoutes(v1, ctx, { embedder: deps.embedder });
    },
    { prefix: "/v1" },
  );

  await app.ready();
  // LISTEN before the first request, so the first streams miss no notification.
  await hub.start(deps.probeTimeoutMs ?? 2_000);
  return app;
}
