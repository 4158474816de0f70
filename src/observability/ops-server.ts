import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "../logger.js";
import type { Db } from "../state/db.js";
import { schemaStatus, shippedMigrations, type Migration } from "../state/migrate.js";

/**
 * The operational HTTP endpoints of a process without an HTTP API (the
 * worker): `/healthz`, `/readyz`, `/metrics`
 * (docs/operations.md#health-readiness-and-metrics-endpoints). Plain node:http,
 * unauthenticated, GET/HEAD only. Bind it to the pod network for probes and
 * scrapes; never expose it publicly.
 *
 * Contracts:
 * - `/healthz` answers 200 whenever the event loop runs: liveness must not
 *   depend on Postgres or Redis, or an outage of those would restart every pod.
 * - `/readyz` answers 200 when every check is ok, else 503, with the body
 *   `readinessBody` renders: the same shape as the ingress's `/readyz`. It
 *   re-evaluates on every call (no restart is ever needed to become ready
 *   again); concurrent probes share one evaluation, and an evaluation that
 *   exceeds `readinessTimeoutMs` answers 503.
 * - `/metrics` answers the Prometheus exposition text.
 */

/** One readiness check: ok, or not with what is wrong. */
export interface Check {
  ok: boolean;
  detail?: string;
}

export interface Readiness {
  ok: boolean;
  checks: Record<string, Check>;
}

/**
 * The `/readyz` body of every role (worker ops server, ingress, `capstan dev`):
 * `{"status": "ready" | "not_ready", "checks": {"<name>": {"ok": bool, "detail"?: string}}}`.
 */
export function readinessBody(r: Readiness): {
  status: "ready" | "not_ready";
  checks: Record<string, Check>;
} {
  return { status: r.ok ? "ready" : "not_ready", checks: r.checks };
}

const pass: Check = { ok: true };
const fail = (detail: string): Check => ({ ok: false, detail });

/** Thrown by `startOpsServer` when its port is taken (`EADDRINUSE`). */
export class PortInUseError extends Error {
  constructor(
    readonly host: string,
    readonly port: number,
    cause: unknown,
  ) {
    super(`ops server: cannot listen on ${host}:${port}: the port is in use`, { cause });
    this.name = "PortInUseError";
  }
}

export interface OpsServerOptions {
  host: string;
  /** 0 picks a free port (tests). */
  port: number;
  metrics: { render(): Promise<{ contentType: string; body: string }> };
  readiness: () => Promise<Readiness>;
  /** Upper bound of one readiness evaluation. Default 3,000 ms (keep it under the probe's timeoutSeconds). */
  readinessTimeoutMs?: number;
  logger?: Logger;
}

export interface OpsServer {
  readonly port: number;
  /** `http://host:port` */
  readonly url: string;
  /** Stop listening and drop open connections (probes and scrapes just retry). */
  close(): Promise<void>;
}

function send(res: ServerResponse, status: number, type: string, body: string, head: boolean): void {
  res.writeHead(status, {
    "content-type": type,
    "content-length": Buffer.byteLength(body),
    "cache-control": "no-store",
  });
  res.end(head ? undefined : body);
}

const JSON_TYPE = "application/json; charset=utf-8";
const errText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

export async function startOpsServer(opts: OpsServerOptions): Promise<OpsServer> {
  const timeoutMs = opts.readinessTimeoutMs ?? 3_000;
  let pending: Promise<Readiness> | undefined;

  /** One evaluation at a time, bounded in time, never rejecting. */
  const evaluate = (): Promise<Readiness> => {
    if (pending) return pending;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<Readiness>((resolve) => {
      timer = setTimeout(
        () =>
          resolve({ ok: false, checks: { readiness: fail(`checks did not finish within ${timeoutMs} ms`) } }),
        timeoutMs,
      );
    });
    const failed = (err: unknown): Readiness => ({
      ok: false,
      checks: { readiness: fail(`checks failed: ${errText(err)}`) },
    });
    const run = opts.readiness().catch(failed);
    const p = Promise.race([run, timeout]).finally(() => {
      clearTimeout(timer);
      pending = undefined;
    });
    pending = p;
    return p;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const head = req.method === "HEAD";
    if (req.method !== "GET" && !head) {
      res.setHeader("allow", "GET, HEAD");
      send(res, 405, JSON_TYPE, JSON.stringify({ error: "method not allowed" }), false);
      return;
    }
    const path = (req.url ?? "/").split("?")[0];
    switch (path) {
      case "/healthz":
        send(res, 200, JSON_TYPE, JSON.stringify({ status: "ok" }), head);
        return;
      case "/readyz": {
        const r = await evaluate();
        send(res, r.ok ? 200 : 503, JSON_TYPE, JSON.stringify(readinessBody(r)), head);
        return;
      }
      case "/metrics": {
        try {
          const m = await opts.metrics.render();
          send(res, 200, m.contentType, m.body, head);
        } catch (err) {
          opts.logger?.warn({ err }, "rendering metrics failed");
          send(res, 500, "text/plain; charset=utf-8", `metrics unavailable: ${errText(err)}\n`, head);
        }
        return;
      }
      default:
        send(res, 404, JSON_TYPE, JSON.stringify({ error: "not found" }), head);
    }
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      opts.logger?.warn({ err }, "ops request failed");
      if (!res.headersSent) send(res, 500, JSON_TYPE, JSON.stringify({ error: "internal" }), false);
      else res.destroy();
    });
  });
  // Bounded: probes and scrapes are tiny; nothing may hold a socket forever.
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  server.keepAliveTimeout = 5_000;
  server.maxConnections = 64;
  server.maxHeadersCount = 50;

  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      server.removeListener("listening", onListening);
      reject(
        err.code === "EADDRINUSE"
          ? new PortInUseError(opts.host, opts.port, err)
          : new Error(`ops server: cannot listen on ${opts.host}:${opts.port}: ${err.message}`, {
              cause: err,
            }),
      );
    };
    const onListening = () => {
      server.removeListener("error", onError);
      resolve();
    };
    server.once("error", onError);
    server.once("listening", onListening);
    server.listen(opts.port, opts.host);
  });
  server.on("error", (err) => opts.logger?.warn({ err }, "ops server error"));
  const port = (server.address() as AddressInfo).port;
  const hostForUrl = opts.host.includes(":") ? `[${opts.host}]` : opts.host;

  return {
    port,
    url: `http://${hostForUrl}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

export interface ReadinessDeps {
  /** Checked with `SELECT 1` and the schema version. */
  db?: Db;
  /** The coordination backend (Redis or in-memory). */
  coord?: { readonly kind: string; ping(): Promise<boolean> };
  /** A worker is ready once warm: started, agents loaded, claim loop running. */
  warm?: () => boolean;
  /** How many agents are loaded; 0 fails the `agents` check. */
  agents?: () => number;
  /** True once shutdown began: stop being ready so no new work is routed here. */
  draining?: () => boolean;
  /** Per-check timeout. Default 1,000 ms. */
  timeoutMs?: number;
  /** The migrations this build ships (default: loaded once from disk). */
  migrations?: Migration[];
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/**
 * Readiness as a function for `startOpsServer` and the ingress's `/readyz`.
 * Checks run concurrently, each bounded by `timeoutMs`, on every call: a
 * backend that comes back makes the process ready again on the next probe.
 *
 * - `postgres`: `SELECT 1` through the process's own pool (the path its work
 *   uses; the pool reconnects by itself once the server is back).
 * - `schema`: the database has at least this build's migrations. A database
 *   *ahead* of the build (a newer release migrated it during a rolling
 *   upgrade) stays ready: migrations are additive, and failing here would
 *   take every old replica out of service at once.
 * - `coordination`: the backend answers `ping()`.
 * - `warm`, `agents`, `draining`: as described on `ReadinessDeps` (each only
 *   when its dependency is given; `draining` only while shutting down).
 */
export function readinessChecks(deps: ReadinessDeps): () => Promise<Readiness> {
  const timeoutMs = deps.timeoutMs ?? 1_000;
  const shipped = () => (deps.migrations ? Promise.resolve(deps.migrations) : shippedMigrations());

  return async () => {
    const checks: Record<string, Check> = {};
    const tasks: Promise<void>[] = [];
    const db = deps.db;
    if (db) {
      tasks.push(
        within(db.query("SELECT 1"), timeoutMs, "postgres").then(
          () => void (checks.postgres = pass),
          (err: unknown) => void (checks.postgres = fail(`unreachable: ${errText(err)}`)),
        ),
        within(
          shipped().then((m) => schemaStatus(db, m)),
          timeoutMs,
          "schema",
        ).then(
          (s) =>
            void (checks.schema =
              s.database >= s.code
                ? pass
                : fail(
                    `database schema is version ${s.database}, this build needs ${s.code}: run \`capstan migrate\``,
                  )),
          (err: unknown) => void (checks.schema = fail(`unknown: ${errText(err)}`)),
        ),
      );
    }
    const coord = deps.coord;
    if (coord) {
      tasks.push(
        within(coord.ping(), timeoutMs, "coordination").then(
          (ok) => void (checks.coordination = ok ? pass : fail(`${coord.kind} coordination unreachable`)),
          (err: unknown) => void (checks.coordination = fail(`${coord.kind} coordination: ${errText(err)}`)),
        ),
      );
    }
    await Promise.all(tasks);
    if (deps.warm) checks.warm = deps.warm() ? pass : fail("starting: not warm yet");
    if (deps.agents) {
      const n = deps.agents();
      checks.agents = n > 0 ? pass : fail("no agents loaded (add a capstan.config.ts)");
    }
    if (deps.draining?.()) checks.draining = fail("shutting down");
    // Insertion order varies with which backend answered first: answer in a stable order.
    const ordered: Record<string, Check> = {};
    for (const k of CHECK_ORDER) if (checks[k]) ordered[k] = checks[k];
    return { ok: Object.values(ordered).every((c) => c.ok), checks: ordered };
  };
}

const CHECK_ORDER = ["postgres", "schema", "coordination", "warm", "agents", "draining"] as const;
