import type { RunningIngress } from "../ingress/server.js";
import { createMetrics, type Metrics } from "../observability/metrics.js";
import {
  PortInUseError,
  readinessChecks,
  startOpsServer,
  type OpsServer,
  type OpsServerOptions,
} from "../observability/ops-server.js";
import { workerMetricsHooks } from "../observability/worker-hooks.js";
import { createWorker, type Worker, type WorkerDeps } from "../worker/worker.js";
import { installLeaseGuard } from "../worker/lease-guard.js";
import { CliError, EXIT } from "./exit.js";
import type { Runtime } from "./runtime.js";

/**
 * Starting the roles from an opened Runtime, shared by `capstan ingress`,
 * `capstan worker` and `capstan dev` (one process, one metrics registry).
 * What only one role needs is imported when that role starts (Fastify for
 * the ingress, OpenTelemetry when tracing is on): a worker's cold start
 * bounds how fast runs of a dead worker resume.
 */

/** The worker's ops port when `worker.opsPort` (CAPSTAN_OPS_PORT) is unset. */
export const DEFAULT_OPS_PORT = 7071;

export function processMetrics(rt: Runtime, role: string): Metrics {
  const metrics = createMetrics({ defaultLabels: { role } });
  metrics.trackDbPool(() => rt.db.stats());
  metrics.trackQueue(rt.db);
  rt.observeEmbeddingCache((hits, misses) => {
    if (hits > 0) metrics.cacheRequests.inc({ cache: "embedding", result: "hit" }, hits);
    if (misses > 0) metrics.cacheRequests.inc({ cache: "embedding", result: "miss" }, misses);
  });
  return metrics;
}

export async function startIngressRole(rt: Runtime, metrics: Metrics): Promise<RunningIngress> {
  const { startIngress } = await import("../ingress/server.js");
  const perMinute = rt.settings.http.rateLimitPerMinute;
  const { host, port } = rt.settings.http;
  return startIngress({
    db: rt.db,
    coord: rt.coord!,
    settings: rt.settings,
    logger: rt.logger,
    agentNames: () => [...rt.agents.keys()],
    host,
    port,
    metrics,
    rateLimit: perMinute > 0 ? { points: perMinute, durationMs: 60_000 } : false,
    redisFailurePolicy: rt.settings.redis.failurePolicy,
    embedder: rt.embedder,
    prices: rt.config?.models?.prices,
    ...(rt.tracing ? { tracing: rt.tracing } : {}),
  }).catch((err: unknown) => {
    if ((err as NodeJS.ErrnoException | null)?.code !== "EADDRINUSE") throw err;
    throw new CliError(
      EXIT.busy,
      `the HTTP port ${host}:${port} is in use by another process: set PORT (or --port) to a free port`,
      { cause: err },
    );
  });
}

/** The worker's observability hooks: metrics, plus tracing (and its run scope) when it is on. */
async function workerHooks(rt: Runtime, metrics: Metrics): Promise<Pick<WorkerDeps, "hooks" | "runScope">> {
  const hooks = workerMetricsHooks(metrics, {
    agents: rt.agents.keys(),
    concurrency: rt.settings.worker.concurrency,
  });
  if (!rt.tracing) return { hooks };
  const { composeWorkerHooks, tracingHooks } = await import("../observability/tracing-hooks.js");
  const traced = tracingHooks(rt.tracing);
  return { hooks: composeWorkerHooks(hooks, traced.hooks), runScope: traced.runScope };
}

/**
 * The ops server on `worker.opsPort`. Set explicitly, a port in use stops the
 * worker (exit code 3) naming the setting; unset, the default port in use
 * (several workers on one host) falls back to a free port, logged.
 */
async function startWorkerOps(
  rt: Runtime,
  opts: Omit<OpsServerOptions, "host" | "port">,
): Promise<OpsServer> {
  const host = rt.settings.http.host;
  const explicit = rt.settings.worker.opsPort;
  try {
    return await startOpsServer({ ...opts, host, port: explicit ?? DEFAULT_OPS_PORT });
  } catch (err) {
    if (!(err instanceof PortInUseError)) throw err;
    if (explicit !== undefined)
      throw new CliError(
        EXIT.busy,
        `the worker ops port ${host}:${explicit} is in use by another process: ` +
          "set CAPSTAN_OPS_PORT (or worker.opsPort) to a free port, or to 0 for any free port",
        { cause: err },
      );
  }
  const ops = await startOpsServer({ ...opts, host, port: 0 });
  rt.logger.warn(
    { url: ops.url, port: ops.port },
    `the default ops port ${DEFAULT_OPS_PORT} is in use (another worker on this host?): ` +
      `serving /healthz, /readyz and /metrics on port ${ops.port} instead; set CAPSTAN_OPS_PORT to choose`,
  );
  return ops;
}

export interface WorkerRole {
  worker: Worker;
  /** The ops server (/healthz, /readyz, /metrics), absent in `capstan dev` where ingress serves them. */
  ops: OpsServer | undefined;
  stop(): Promise<void>;
}

export async function startWorkerRole(
  rt: Runtime,
  metrics: Metrics,
  opts: { opsServer: boolean },
): Promise<WorkerRole> {
  let warm = false;
  let draining = false;
  const ops = opts.opsServer
    ? await startWorkerOps(rt, {
        metrics,
        logger: rt.logger,
        readiness: readinessChecks({
          db: rt.db,
          ...(rt.coord ? { coord: rt.coord } : {}),
          warm: () => warm,
          agents: () => rt.agents.size,
          draining: () => draining,
        }),
      })
    : undefined;
  // Tools' fetch requests are written only while the run's lease is surely held (src/worker/lease-guard.ts).
  const leaseGuard = installLeaseGuard();
  const worker = createWorker({
    db: rt.db,
    coord: rt.coord!,
    agents: rt.agents,
    settings: rt.settings,
    logger: rt.logger,
    // Budgets, provider limits, caches and memory recall: without them a worker process runs uncontrolled.
    services: { ...rt.services, leaseGuard },
    ...(await workerHooks(rt, metrics)),
  });
  await worker.start();
  warm = true;
  if (ops) rt.logger.info({ url: ops.url }, "worker ops endpoints listening");
  return {
    worker,
    ops,
    async stop() {
      draining = true;
      await worker.stop();
      leaseGuard.uninstall();
      await ops?.close();
    },
  };
}
