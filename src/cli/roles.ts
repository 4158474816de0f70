import { startIngress, type RunningIngress } from "../ingress/server.js";
import { createMetrics, type Metrics } from "../observability/metrics.js";
import { readinessChecks, startOpsServer, type OpsServer } from "../observability/ops-server.js";
import { workerMetricsHooks } from "../observability/worker-hooks.js";
import { createWorker, type Worker, type WorkerDeps } from "../worker/worker.js";
import { installLeaseGuard } from "../worker/lease-guard.js";
import { composeWorkerHooks, tracingHooks } from "../observability/tracing-hooks.js";
import type { Runtime } from "./runtime.js";

/**
 * Starting the roles from an opened Runtime, shared by `capstan ingress`,
 * `capstan worker` and `capstan dev` (one process, one metrics registry).
 */

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
  const perMinute = rt.settings.http.rateLimitPerMinute;
  return startIngress({
    db: rt.db,
    coord: rt.coord!,
    settings: rt.settings,
    logger: rt.logger,
    agentNames: () => [...rt.agents.keys()],
    host: rt.settings.http.host,
    port: rt.settings.http.port,
    metrics,
    rateLimit: perMinute > 0 ? { points: perMinute, durationMs: 60_000 } : false,
    redisFailurePolicy: rt.settings.redis.failurePolicy,
    embedder: rt.embedder,
    prices: rt.config?.models?.prices,
    ...(rt.tracing ? { tracing: rt.tracing } : {}),
  });
}

/** The worker's observability hooks: metrics, plus tracing (and its run scope) when it is on. */
function workerHooks(rt: Runtime, metrics: Metrics): Pick<WorkerDeps, "hooks" | "runScope"> {
  const hooks = workerMetricsHooks(metrics, {
    agents: rt.agents.keys(),
    concurrency: rt.settings.worker.concurrency,
  });
  if (!rt.tracing) return { hooks };
  const traced = tracingHooks(rt.tracing);
  return { hooks: composeWorkerHooks(hooks, traced.hooks), runScope: traced.runScope };
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
    ? await startOpsServer({
        host: rt.settings.http.host,
        port: rt.settings.worker.opsPort,
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
    ...workerHooks(rt, metrics),
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
