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
 * - `/readyz` answers 200 when every check is `true`, else 503, with the
 *   checks as JSON. It re-evaluates on every call (no restart is ever needed
 *   to become ready again); concurrent probes share one evaluation, and an
 *   evaluation that exceeds `readinessTimeoutMs` answers 503.
 * - `/metrics` answers the Prometheus exposition text.
 */

/** A check is `true` when fine; `false` or a string saying what is wrong otherwise. */
export type CheckResult = boolean | string;

export interface Readiness {
  ok: boolean;
  checks: Record<string, CheckResult>;
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
        () => resolve({ ok: false, checks: { readiness: `checks did not finish within ${timeoutMs} ms` } }),
        timeoutMs,
      );
    });
    const failed = (err: unknown): Readiness => ({
      ok: false,
      checks: { readiness: `checks failed: ${errText(err)}` },
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
        send(
          res,
          r.ok ? 200 : 503,
          JSON_TYPE,
          JSON.stringify({ status: r.ok ? "ready" : "unready", checks: r.checks }),
          head,
        );
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
    const onError = (err: Error) => {
      server.removeListener("listening", onListening);
      reject(
        new Error(`ops server: cannot listen on ${opts.host}:${opts.port}: ${err.message}`, { cause: err }),
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
 * Readiness as a function for `startOpsServer`. Checks run concurrently,
 * each bounded by `timeoutMs`, on every call: a backend that comes back makes
 * the process ready again on the next probe.
 *
 * - `postgres`: `SELECT 1` through the process's own pool (the path its work
 *   uses; the pool reconnects by itself once the server is back).
 * - `schema`: the database has at least this build's migrations. A database
 *   *ahead* of the build (a newer release migrated it during a rolling
 *   upgrade) stays ready: migrations are additive, and failing here would
 *   take every old replica out of service at once.
 * - `coordination`: the backend answers `ping()`.
 * - `warm`, `agents`, `draining`: as described on `ReadinessDeps`.
 */
export function readinessChecks(deps: ReadinessDeps): () => Promise<Readiness> {
  const timeoutMs = deps.timeoutMs ?? 1_000;
  const shipped = () => (deps.migrations ? Promise.resolve(deps.migrations) : shippedMigrations());

  return async () => {
    const checks: Record<string, CheckResult> = {};
    const tasks: Promise<void>[] = [];
    const db = deps.db;
    if (db) {
      tasks.push(
        within(db.query("SELECT 1"), timeoutMs, "postgres").then(
          () => void (checks.postgres = true),
          (err: unknown) => void (checks.postgres = `unreachable: ${errText(err)}`),
        ),
        within(
          shipped().then((m) => schemaStatus(db, m)),
          timeoutMs,
          "schema",
        ).then(
          (s) =>
            void (checks.schema =
              s.database >= s.code
                ? true
                : `database schema is version ${s.database}, this build needs ${s.code}: run \`capstan migrate\``),
          (err: unknown) => void (checks.schema = `unknown: ${errText(err)}`),
        ),
      );
    }
    const coord = deps.coord;
    if (coord) {
      tasks.push(
        within(coord.ping(), timeoutMs, "coordination").then(
          (ok) => void (checks.coordination = ok ? true : `${coord.kind} coordination unreachable`),
          (err: unknown) => void (checks.coordination = `${coord.kind} coordination: ${errText(err)}`),
        ),
      );
    }
    await Promise.all(tasks);
    if (deps.warm) checks.warm = deps.warm() ? true : "starting: not warm yet";
    if (deps.agents) {
      const n = deps.agents();
      checks.agents = n > 0 ? true : "no agents loaded (add a capstan.config.ts)";
    }
    if (deps.draining?.()) checks.draining = "shutting down";
    return { ok: Object.values(checks).every((c) => c === true), checks };
  };
}
