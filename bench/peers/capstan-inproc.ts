/**
 * Capstan in one process, measured exactly like the peers: the same worker
 * (createWorker: claims with leases, journals every step fenced by the
 * epoch, journals tool intents, persists coarse events and publishes them to
 * Redis, enforces per-thread FIFO) on a pool of `poolSize` connections, with
 * runs enqueued by `enqueueRun` (the ingress's own transaction) instead of
 * over HTTP, and no SSE client. The apples-to-apples row against in-process
 * peers; the multi-process HTTP figures are measured separately.
 */
import { resolveSettings } from "../../src/config/config.js";
import { createRedisCoordination } from "../../src/coord/redis/index.js";
import { loadAgents } from "../../src/cli/runtime.js";
import { defineConfig } from "../../src/agent/define.js";
import { silentLogger } from "../../src/logger.js";
import { createPgDb } from "../../src/state/db.js";
import { enqueueRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import { createWorker } from "../../src/worker/worker.js";
import { benchAgent } from "../capstan.bench.config.js";
import { STEPS_PER_RUN, userMessage } from "../workload.js";
import { closedLoop, type PeerOptions, type PeerResult } from "./common.js";

export async function runCapstanInProcess(
  opts: PeerOptions & { redisUrl: string; redisPrefix: string },
): Promise<PeerResult> {
  const logger = silentLogger();
  const settings = resolveSettings({
    flags: {
      database: { url: opts.databaseUrl, poolSize: opts.poolSize },
      redis: { url: opts.redisUrl, keyPrefix: opts.redisPrefix },
      worker: { concurrency: opts.concurrency, pollMs: 2_000 },
      log: { level: "silent" },
    },
  });
  const db = createPgDb({ url: opts.databaseUrl, poolSize: opts.poolSize, logger });
  const coord = createRedisCoordination({
    url: opts.redisUrl,
    keyPrefix: opts.redisPrefix,
    logger,
    events: { maxLen: 10_000, ttlMs: 600_000 },
  });
  const agents = loadAgents(defineConfig({ agents: [benchAgent(opts.modelDelayMs)] }), {});
  const waiting = new Map<string, { resolve: () => void; reject: (e: Error) => void }>();
  /** Outcomes of runs that ended before their waiter registered. */
  const early = new Map<string, string>();
  const settle = (runId: string, outcome: string): void => {
    const w = waiting.get(runId);
    if (!w) {
      early.set(runId, outcome);
      return;
    }
    waiting.delete(runId);
    if (outcome === "succeeded") w.resolve();
    else w.reject(new Error(`run ${runId} ended ${outcome}`));
  };
  const worker = createWorker({
    db,
    coord,
    agents,
    settings,
    logger,
    hooks: {
      onRunEnd: (run, outcome) => settle(run.id, outcome),
    },
  });
  try {
    const tenant = await ensureTenant(db, `bench-inproc-${process.pid}`);
    await worker.start();
    let n = 0;
    return await closedLoop(opts, async () => {
      const thread = await createThread(db, tenant.id);
      const { run } = await enqueueRun(db, {
        tenantId: tenant.id,
        threadId: thread.id,
        agent: "bench",
        content: userMessage(n++),
        maxAttempts: 3,
        defaultMaxPending: 100_000,
      });
      await new Promise<void>((resolve, reject) => {
        waiting.set(run.id, { resolve, reject });
        const outcome = early.get(run.id);
        if (outcome !== undefined) {
          early.delete(run.id);
          settle(run.id, outcome);
        }
      });
      return STEPS_PER_RUN;
    });
  } finally {
    await worker.stop({ graceMs: 1_000 }).catch(() => {});
    await coord.close().catch(() => {});
    await db.close().catch(() => {});
  }
}
