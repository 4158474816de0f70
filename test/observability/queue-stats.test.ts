import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createQueueStatsCache,
  demandOf,
  desiredWorkers,
  KEDA_QUEUE_QUERY,
  QUEUE_STATS_QUERY,
  readQueueStats,
  readScalingDemand,
  type QueueGroup,
} from "../../src/observability/queue-stats.js";
import { claimRun, enqueueRun, suspendRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import type { ClaimedRun } from "../../src/state/types.js";
import { createTestDb, type TestDb } from "../support/pg.js";

/**
 * Queue statistics against real PostgreSQL: every number is checked against
 * what the test itself enqueued, claimed and parked.
 */

let t: TestDb;
beforeAll(async () => {
  t = await createTestDb();
});
afterAll(async () => {
  await t?.drop();
});

async function enqueue(tenantId: string, agent: string, threadId?: string) {
  const thread = threadId ?? (await createThread(t.db, tenantId)).id;
  const r = await enqueueRun(t.db, {
    tenantId,
    threadId: thread,
    agent,
    content: "hi",
    maxAttempts: 3,
    defaultMaxPending: 1000,
  });
  return r.run;
}

const key = (g: { agent: string; tenant: string }) => `${g.agent}/${g.tenant}`;

describe("queue stats", () => {
  it("counts ready, blocked, running and waiting runs per agent and tenant, exactly", async () => {
    const acme = await ensureTenant(t.db, "acme");
    const capped = await ensureTenant(t.db, "capped", { maxConcurrency: 2 });

    // acme/alpha: one thread with two runs (the second is blocked behind the
    // first), and three single-run threads.
    const shared = (await createThread(t.db, acme.id)).id;
    await enqueue(acme.id, "alpha", shared);
    await enqueue(acme.id, "alpha", shared);
    for (let i = 0; i < 3; i++) await enqueue(acme.id, "alpha");
    // acme/beta: two runs. capped/alpha: five runs, tenant cap 2.
    for (let i = 0; i < 2; i++) await enqueue(acme.id, "beta");
    for (let i = 0; i < 5; i++) await enqueue(capped.id, "alpha");

    const expected = new Map<string, Omit<QueueGroup, "oldestReadyAgeSeconds">>([
      [
        "alpha/acme",
        {
          agent: "alpha",
          tenant: "acme",
          maxConcurrency: null,
          ready: 4,
          blocked: 1,
          running: 0,
          waiting: 0,
        },
      ],
      [
        "beta/acme",
        { agent: "beta", tenant: "acme", maxConcurrency: null, ready: 2, blocked: 0, running: 0, waiting: 0 },
      ],
      [
        "alpha/capped",
        { agent: "alpha", tenant: "capped", maxConcurrency: 2, ready: 5, blocked: 0, running: 0, waiting: 0 },
      ],
    ]);

    // Claim five runs (the claimer decides which; we tally what it took),
    // then park one of them in `waiting`.
    const claimed: ClaimedRun[] = [];
    for (let i = 0; i < 5; i++) {
      const run = await claimRun(t.db, { workerId: "w1", leaseMs: 60_000 });
      expect(run).not.toBeNull();
      claimed.push(run!);
    }
    const tenantName = (id: string) => (id === acme.id ? "acme" : "capped");
    for (const run of claimed) {
      const g = expected.get(`${run.agent}/${tenantName(run.tenantId)}`)!;
      g.ready--;
      g.running++;
    }
    const parked = claimed[0]!;
    await suspendRun(t.db, parked.lease, { reason: "approval" });
    const pg = expected.get(`${parked.agent}/${tenantName(parked.tenantId)}`)!;
    pg.running--;
    pg.waiting++;

    // Make one claimable run per group 90 s old (database clock).
    await t.db.query(
      `UPDATE runs SET queued_at = now() - interval '90 seconds'
       WHERE id IN (SELECT DISTINCT ON (agent, tenant_id) id FROM runs
                    WHERE status = 'queued' AND ready ORDER BY agent, tenant_id, seq)`,
    );

    const stats = await readQueueStats(t.db);
    const got = new Map(stats.groups.map((g) => [key(g), g]));
    expect([...got.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [k, want] of expected) {
      const g = got.get(k)!;
      expect({ ...g, oldestReadyAgeSeconds: undefined }, k).toEqual({
        ...want,
        oldestReadyAgeSeconds: undefined,
      });
      if (want.ready > 0) {
        expect(g.oldestReadyAgeSeconds, k).toBeGreaterThanOrEqual(90);
        expect(g.oldestReadyAgeSeconds, k).toBeLessThan(100);
      } else {
        expect(g.oldestReadyAgeSeconds, k).toBeNull();
      }
    }

    // The KEDA query: ready + running per tenant, capped by the tenant's concurrency.
    let want = 0;
    for (const tenant of ["acme", "capped"]) {
      const groups = [...expected.values()].filter((g) => g.tenant === tenant);
      const n = groups.reduce((a, g) => a + g.ready + g.running, 0);
      want += tenant === "capped" ? Math.min(n, 2) : n;
    }
    expect(await readScalingDemand(t.db)).toBe(want);
    expect(demandOf(stats)).toBe(want);
  });

  it("reads only pending runs through the partial index", async () => {
    for (const q of [QUEUE_STATS_QUERY, KEDA_QUEUE_QUERY]) {
      const plan = await t.db.tx(async (tx) => {
        // With sequential scans priced out, the plan names the partial index
        // only if the query's WHERE implies the index predicate.
        await tx.query("SET LOCAL enable_seqscan = off");
        const r = await tx.query<{ "QUERY PLAN": string }>(`EXPLAIN ${q}`);
        return r.rows.map((row) => row["QUERY PLAN"]).join("\n");
      });
      expect(plan, q).toMatch(/runs_tenant_active/);
    }
  });

  it("applies the scaling rule: ceil(demand / target) clamped to [min, max]", () => {
    const rule = { targetInFlightPerWorker: 40, minWorkers: 2, maxWorkers: 10 };
    expect(desiredWorkers(0, rule)).toBe(2);
    expect(desiredWorkers(80, rule)).toBe(2);
    expect(desiredWorkers(81, rule)).toBe(3);
    expect(desiredWorkers(10_000, rule)).toBe(10);
  });

  it("serves one read to concurrent callers and caches it for the TTL", async () => {
    let calls = 0;
    const counting = {
      query: ((text: string, params?: unknown[]) => {
        calls++;
        return t.db.query(text, params);
      }) as typeof t.db.query,
    };
    const cache = createQueueStatsCache(counting, { ttlMs: 60_000 });
    const [a, b] = await Promise.all([cache.get(), cache.get()]);
    expect(a).toBe(b);
    await cache.get();
    expect(calls).toBe(1);
  });
});
