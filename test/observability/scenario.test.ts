import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defineAgent } from "../../src/agent/define.js";
import { resolveModel, toolSchemas } from "../../src/agent/models.js";
import { resolveSettings } from "../../src/config/config.js";
import { createMemoryCoordination } from "../../src/coord/index.js";
import type { Coordination } from "../../src/coord/types.js";
import { silentLogger } from "../../src/logger.js";
import { createMetrics, type Metrics } from "../../src/observability/metrics.js";
import { readinessChecks, startOpsServer, type OpsServer } from "../../src/observability/ops-server.js";
import { workerMetricsHooks } from "../../src/observability/worker-hooks.js";
import { enqueueRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import type { LoadedAgent } from "../../src/worker/run-loop.js";
import { createWorker, type Worker } from "../../src/worker/worker.js";
import { createTestDb, until, type TestDb } from "../support/pg.js";
import { parseProm, value, type Sample } from "./prom-text.js";

/**
 * The scenario: runs queue up while no worker runs and /metrics shows
 * the backlog (depth and oldest age rising); a worker starts, drains it, and
 * the queue metrics fall back while the worker's counters count the runs.
 */

let t: TestDb;
let coord: Coordination;
let metrics: Metrics;
let ops: OpsServer;
let worker: Worker | undefined;

beforeAll(async () => {
  t = await createTestDb();
  coord = createMemoryCoordination({ events: { maxLen: 1_000, ttlMs: 600_000 } });
  metrics = createMetrics({ defaultLabels: { role: "worker" } });
  metrics.trackDbPool(() => t.db.stats());
  // No TTL: every scrape of this test must see the database as it is.
  metrics.trackQueue(t.db, { ttlMs: 0 });
  ops = await startOpsServer({
    host: "127.0.0.1",
    port: 0,
    metrics,
    readiness: readinessChecks({ db: t.db, coord, warm: () => worker !== undefined }),
  });
});
afterAll(async () => {
  await worker?.stop({ graceMs: 1_000 });
  await ops?.close();
  await coord?.close();
  await t?.drop();
});

async function scrape(): Promise<Sample[]> {
  const r = await fetch(ops.url + "/metrics", { signal: AbortSignal.timeout(10_000) });
  expect(r.status).toBe(200);
  return parseProm(await r.text());
}

describe("metrics scenario", () => {
  it("shows the backlog rise while no worker runs and fall once one drains it", async () => {
    const tenants = [await ensureTenant(t.db, "t-one"), await ensureTenant(t.db, "t-two")];
    let s = await scrape();
    expect(value(s, "capstan_scaling_demand", { role: "worker" })).toBe(0);
    expect(value(s, "capstan_queue_depth", { agent: "echo", tenant: "t-one" })).toBeUndefined();

    for (const tenant of tenants) {
      for (let i = 0; i < 3; i++) {
        const thread = await createThread(t.db, tenant.id);
        await enqueueRun(t.db, {
          tenantId: tenant.id,
          threadId: thread.id,
          agent: "echo",
          content: `hello ${i}`,
          maxAttempts: 3,
          defaultMaxPending: 1000,
        });
      }
    }
    s = await scrape();
    expect(value(s, "capstan_queue_depth", { agent: "echo", tenant: "t-one" })).toBe(3);
    expect(value(s, "capstan_queue_depth", { agent: "echo", tenant: "t-two" })).toBe(3);
    expect(value(s, "capstan_scaling_demand")).toBe(6);
    const firstAge = value(s, "capstan_queue_oldest_age_seconds", { agent: "echo", tenant: "t-one" })!;
    expect(firstAge).toBeGreaterThanOrEqual(0);
    // Nobody works the queue: the oldest age only grows.
    await until(
      async () => {
        const later = await scrape();
        const age = value(later, "capstan_queue_oldest_age_seconds", { agent: "echo", tenant: "t-one" });
        return age !== undefined && age > firstAge;
      },
      { what: "the oldest queued age to rise" },
    );
    expect((await fetch(ops.url + "/readyz")).status).toBe(503); // not warm: no worker yet

    const settings = resolveSettings({ flags: { worker: { leaseMs: 5_000, pollMs: 100, concurrency: 4 } } });
    const def = defineAgent({ name: "echo", model: "scripted:echo", instructions: "" });
    const agents = new Map<string, LoadedAgent>([
      ["echo", { def, model: resolveModel(def.model, {}), tools: toolSchemas(def) }],
    ]);
    const w = createWorker({
      db: t.db,
      coord,
      agents,
      settings,
      logger: silentLogger(),
      hooks: workerMetricsHooks(metrics, { agents: agents.keys(), concurrency: settings.worker.concurrency }),
    });
    await w.start();
    worker = w;

    s = await until(
      async () => {
        const x = await scrape();
        return value(x, "capstan_runs_finished_total", { outcome: "succeeded", agent: "echo" }) === 6
          ? x
          : null;
      },
      { what: "the worker to finish the six runs" },
    );
    expect(value(s, "capstan_runs_in_flight")).toBe(0);
    expect(value(s, "capstan_worker_capacity")).toBe(4);
    expect(value(s, "capstan_pickup_latency_seconds_count", { agent: "echo" })).toBe(6);
    // Every run waited at least as long as the first scrape saw the oldest one wait.
    expect(value(s, "capstan_pickup_latency_seconds_sum", { agent: "echo" })).toBeGreaterThan(firstAge);
    expect(value(s, "capstan_queue_depth", { agent: "echo", tenant: "t-one" })).toBeUndefined();
    expect(value(s, "capstan_queue_oldest_age_seconds", { agent: "echo", tenant: "t-one" })).toBeUndefined();
    expect(value(s, "capstan_scaling_demand")).toBe(0);
    expect(value(s, "capstan_runs_running", { agent: "echo" })).toBeUndefined();
    expect(value(s, "capstan_db_pool_connections")).toBeGreaterThan(0);
    expect((await fetch(ops.url + "/readyz")).status).toBe(200);

    // One LLM step per echo run, and the token counters match the journal.
    expect(value(s, "capstan_step_duration_seconds_count", { kind: "llm", agent: "echo" })).toBe(6);
    expect(value(s, "capstan_step_duration_seconds_count", { kind: "tool", agent: "echo" })).toBeUndefined();
    const used = await t.db.query<{ i: number; o: number }>(
      "SELECT sum(input_tokens)::int AS i, sum(output_tokens)::int AS o FROM steps",
    );
    expect(used.rows[0]!.i).toBeGreaterThan(0);
    expect(value(s, "capstan_llm_input_tokens_total", { model: "scripted:echo" })).toBe(used.rows[0]!.i);
    expect(value(s, "capstan_llm_output_tokens_total", { model: "scripted:echo" })).toBe(used.rows[0]!.o);
  });
});
