/**
 * Tenant budgets across workers: real PostgreSQL (authoritative usage) and
 * real Redis (shared counters) under a random key prefix. A "worker" is a
 * guard with its own Redis connection; two of them share one prefix.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createCostBackend, type CostBackend } from "../../src/cost/backend.js";
import {
  createBudgetGuard,
  type BudgetGuard,
  type BudgetGuardOptions,
  type Reservation,
} from "../../src/cost/budget.js";
import {
  createMemoryBudgetStore,
  type BudgetStore,
  type StoreReserveResult,
} from "../../src/cost/budget-store.js";
import type { TokenEstimate } from "../../src/cost/estimate.js";
import { CapstanError, isCapstanError } from "../../src/errors.js";
import { silentLogger } from "../../src/logger.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { readBudgetStatus, recordUsageTx, setTenantBudget } from "../../src/state/usage.js";
import { createTestDb, until, type TestDb } from "../support/pg.js";
import { adminRedis, deleteKeys, randomPrefix, REDIS_URL } from "../support/redis.js";

let t: TestDb;
const prefix = randomPrefix();
const opened: { close(): Promise<void> }[] = [];
let tenantSeq = 0;

beforeAll(async () => {
  t = await createTestDb();
});
afterEach(async () => {
  for (const o of opened.splice(0).reverse()) await o.close();
});
afterAll(async () => {
  await deleteKeys(prefix);
  await t?.drop();
});

function redisBackend(url = REDIS_URL): CostBackend {
  const b = createCostBackend({ redis: { url, keyPrefix: prefix }, logger: silentLogger() });
  opened.push(b);
  return b;
}

function guard(
  b: CostBackend | { budget: CostBackend["budget"] },
  extra: Partial<
    Pick<BudgetGuardOptions, "reservationTtlMs" | "resyncMs" | "inFlightWaitMs" | "db" | "hooks">
  > = {},
): BudgetGuard {
  const g = createBudgetGuard({
    db: t.db,
    store: b.budget,
    logger: silentLogger(),
    budgetCacheMs: 0,
    // These tests pin the admission rules: refuse at once (the wait for calls
    // in flight has its own test).
    inFlightWaitMs: 0,
    ...extra,
  });
  opened.push(g);
  return g;
}

async function tenantWithBudget(daily: number | null, monthly: number | null = null): Promise<string> {
  const id = (await ensureTenant(t.db, `budget-${++tenantSeq}-${Date.now()}`)).id;
  await setTenantBudget(t.db, id, { daily, monthly });
  return id;
}

/** What the worker does after a call: journal it (here: the usage rollup), then settle the reservation. */
async function spend(tenantId: string, r: Reservation, tokens: number): Promise<void> {
  try {
    await t.db.tx((q) =>
      recordUsageTx(q, { tenantId, model: "test:model", inputTokens: tokens, outputTokens: 0 }),
    );
  } finally {
    await r.settle(tokens);
  }
}

const est = (likely: number, max: number): TokenEstimate => ({ likely, max, maxOutputTokens: 100 });

/**
 * The real store, with a record of what each reservation attempt got: the
 * guard's re-checks become observable (how often a waiter asked, and what it
 * was told) without timing them.
 */
function recorded(store: BudgetStore): {
  store: BudgetStore;
  /**
   * Outcomes of the checks for reservations of run `runId` (ids are `run:step:random`);
   * a request to seed the counters is part of a check, not an outcome, and is left out.
   */
  results(runId: string): StoreReserveResult["kind"][];
} {
  const log: { id: string; kind: StoreReserveResult["kind"] }[] = [];
  return {
    store: {
      ...store,
      reserve: async (...args) => {
        const r = await store.reserve(...args);
        if (r.kind !== "seed") log.push({ id: args[1], kind: r.kind });
        return r;
      },
    },
    results: (runId) => log.filter((l) => l.id.startsWith(`${runId}:`)).map((l) => l.kind),
  };
}

/** The expiry (Redis clock, ms) of a live reservation in the day period's zset, or null once it is gone. */
async function reservationExpiry(tenantId: string, id: string): Promise<number | null> {
  const r = adminRedis();
  try {
    const [key, ...more] = await r.keys(`${prefix}bud:{${tenantId}}:d:*:z`);
    if (key === undefined || more.length > 0)
      throw new Error(`expected one day zset, got ${String(key)} ${more.join(" ")}`);
    const score = await r.zscore(key, id);
    return score === null ? null : Number(score);
  } finally {
    r.disconnect();
  }
}

const refusedWithBudgetCode = (e: unknown): boolean =>
  isCapstanError(e, "budget_exceeded") && e.details?.period !== undefined;

/**
 * Runs that each make LLM calls until the budget refuses one: the scenario of
 * the check, with `workers` guards sharing the budget.
 */
async function exhaust(
  tenantId: string,
  guards: BudgetGuard[],
  runs: number,
  e: TokenEstimate,
): Promise<{ modes: Set<string>; calls: number; otherErrors: unknown[] }> {
  const modes = new Set<string>();
  const otherErrors: unknown[] = [];
  let calls = 0;
  await Promise.all(
    Array.from({ length: runs }, async (_, run) => {
      const g = guards[run % guards.length]!;
      for (let step = 0; ; step++) {
        let r: Reservation;
        try {
          r = await g.reserve({ tenantId, runId: `run-${run}`, stepNo: step, estimate: e });
        } catch (err) {
          if (!refusedWithBudgetCode(err)) otherErrors.push(err);
          return;
        }
        modes.add(r.mode);
        calls++;
        // The "model call": some milliseconds, then its actual usage, at most the upper bound.
        await new Promise((res) => setTimeout(res, 2 + Math.floor(Math.random() * 15)));
        const actual =
          Math.random() < 0.3 ? e.max : e.likely / 2 + Math.floor(Math.random() * (e.max - e.likely / 2));
        await spend(tenantId, r, Math.ceil(actual));
      }
    }),
  );
  return { modes, calls, otherErrors };
}

describe("budget guard on Redis, two workers", () => {
  it("20 concurrent runs against N tokens: spend ≤ N + one call per worker; later calls are refused", async () => {
    const N = 20_000;
    const e = est(600, 1_500);
    const tenantId = await tenantWithBudget(N);
    const guards = [guard(redisBackend()), guard(redisBackend())];
    const out = await exhaust(tenantId, guards, 20, e);
    expect(out.otherErrors).toEqual([]);
    const used = (await readBudgetStatus(t.db, tenantId))!.dayUsed;
    expect(used).toBeLessThanOrEqual(N + guards.length * e.max);
    expect(used).toBeGreaterThan(N / 2);
    expect(out.modes.has("shared")).toBe(true);
    for (const g of guards) {
      const err: unknown = await g
        .reserve({ tenantId, runId: "late", stepNo: 0, estimate: e })
        .catch((x: unknown) => x);
      expect(isCapstanError(err, "budget_exceeded")).toBe(true);
      expect((err as CapstanError).details).toMatchObject({ period: "day", budget: N });
      expect((err as CapstanError).message).toMatch(/daily token budget of 20000 is used up/);
    }
  });

  it("the last stretch admits one likely-sized call per worker at a time, never more", async () => {
    const tenantId = await tenantWithBudget(1_000);
    const w1 = guard(redisBackend());
    const w2 = guard(redisBackend());
    const a = await w1.reserve({ tenantId, runId: "a", stepNo: 0, estimate: est(300, 900) });
    expect(a.mode).toBe("shared");
    expect(a.amount).toBe(900);
    expect(a.maxOutputTokens).toBe(100);
    // 100 left: not even the likely estimate fits.
    await expect(w2.reserve({ tenantId, runId: "b", stepNo: 0, estimate: est(300, 900) })).rejects.toSatisfy(
      refusedWithBudgetCode,
    );
    await spend(tenantId, a, 250);
    // 750 left: the bound (900) does not fit, the likely estimate (300) does → serialised.
    const b = await w1.reserve({ tenantId, runId: "b", stepNo: 1, estimate: est(300, 900) });
    expect(b.mode).toBe("serialised");
    expect(b.amount).toBe(300);
    // The same worker's next last-stretch call waits for b; the other worker gets its own one.
    const waiting = w1.reserve({ tenantId, runId: "c", stepNo: 1, estimate: est(300, 900) }).then(
      (r) => r,
      (e: unknown) => e,
    );
    const c = await w2.reserve({ tenantId, runId: "d", stepNo: 1, estimate: est(300, 900) });
    expect(c.mode).toBe("serialised");
    // Worst case: both spend their upper bound.
    await spend(tenantId, b, 900);
    expect(refusedWithBudgetCode(await waiting)).toBe(true);
    await spend(tenantId, c, 900);
    const used = (await readBudgetStatus(t.db, tenantId))!.dayUsed;
    expect(used).toBe(2_050);
    expect(used).toBeLessThanOrEqual(1_000 + 2 * 900);
  });

  it("a call that fits once the calls in flight settle waits for them instead of failing", async () => {
    const tenantId = await tenantWithBudget(1_000);
    const w1 = guard(redisBackend());
    const rec = recorded(redisBackend().budget);
    // A wait longer than the test may run: b is admitted only because a settles.
    const w2 = guard({ budget: rec.store }, { inFlightWaitMs: 600_000 });
    const a = await w1.reserve({ tenantId, runId: "a", stepNo: 0, estimate: est(300, 900) });
    // 100 left beside a's 900 in flight, but a will likely spend less: b waits, not refused.
    let settledB = false;
    const b = w2.reserve({ tenantId, runId: "b", stepNo: 0, estimate: est(300, 900) }).finally(() => {
      settledB = true;
    });
    // b asks again and again, is refused each time while a is in flight, and keeps waiting.
    await until(() => rec.results("b").length >= 3, { what: "three of the waiter's re-checks" });
    expect(rec.results("b").every((k) => k === "refused")).toBe(true);
    expect(settledB).toBe(false);
    await spend(tenantId, a, 250);
    const rb = await b;
    expect(rb.mode).toBe("serialised"); // 750 left: the likely estimate fits, the bound does not
    expect(rec.results("b").at(-1)).toBe("admitted");
    await spend(tenantId, rb, 700);
    // 950 used: nothing in flight can free room, so a call is refused on its first check.
    await expect(w2.reserve({ tenantId, runId: "c", stepNo: 0, estimate: est(300, 900) })).rejects.toSatisfy(
      refusedWithBudgetCode,
    );
    expect(rec.results("c")).toEqual(["refused"]);
  });

  it("the wait for calls in flight is bounded and honours the AbortSignal", async () => {
    const tenantId = await tenantWithBudget(1_000);
    const w1 = guard(redisBackend());
    const a = await w1.reserve({ tenantId, runId: "a", stepNo: 0, estimate: est(300, 900) });
    const bounded = guard(redisBackend(), { inFlightWaitMs: 300 });
    await expect(
      bounded.reserve({ tenantId, runId: "b", stepNo: 0, estimate: est(300, 900) }),
    ).rejects.toSatisfy(refusedWithBudgetCode);
    const patient = guard(redisBackend(), { inFlightWaitMs: 60_000 });
    const ac = new AbortController();
    const waiting = patient.reserve({
      tenantId,
      runId: "c",
      stepNo: 0,
      estimate: est(300, 900),
      signal: ac.signal,
    });
    ac.abort(new Error("cancelled"));
    await expect(waiting).rejects.toThrow("cancelled");
    await a.release();
  });

  it("a crashed worker's reservation lapses; a live one is extended past its TTL", async () => {
    const tenantId = await tenantWithBudget(1_000);
    const crashed = guard(redisBackend(), { reservationTtlMs: 600 });
    const live = guard(redisBackend(), { reservationTtlMs: 600 });
    const x = await crashed.reserve({ tenantId, runId: "x", stepNo: 0, estimate: 900 });
    // kill -9: no settle, no more extensions.
    await crashed.close();
    // Not released by the crash: it still holds its 900 until it lapses.
    await expect(live.reserve({ tenantId, runId: "y", stepNo: 0, estimate: 500 })).rejects.toSatisfy(
      refusedWithBudgetCode,
    );
    const r = await until(
      () =>
        live.reserve({ tenantId, runId: "y", stepNo: 1, estimate: 500 }).catch((e: unknown) => {
          if (refusedWithBudgetCode(e)) return undefined;
          throw e;
        }),
      { timeoutMs: 10_000, what: "the crashed reservation to lapse" },
    );
    expect(r.mode).toBe("shared");
    expect(await reservationExpiry(tenantId, x.id)).toBeNull(); // it lapsed, it was not settled
    // r is held by a live guard: it outlives several TTLs while "its call runs". Redis's clock is
    // the witness: each extension sets the expiry to its now + TTL, so an expiry three TTLs past
    // the first one means three TTLs went by with r still live.
    const firstExpiry = await reservationExpiry(tenantId, r.id);
    expect(firstExpiry).not.toBeNull();
    await until(
      async () => {
        const e = await reservationExpiry(tenantId, r.id);
        if (e === null) throw new Error("the live reservation lapsed");
        return e >= firstExpiry! + 3 * 600;
      },
      { timeoutMs: 10_000, intervalMs: 100, what: "three TTLs of extensions" },
    );
    await expect(live.reserve({ tenantId, runId: "z", stepNo: 0, estimate: 600 })).rejects.toSatisfy(
      refusedWithBudgetCode,
    );
    await r.release();
    expect((await live.reserve({ tenantId, runId: "z", stepNo: 1, estimate: 600 })).mode).toBe("shared");
  });

  it("missing counters (Redis flushed) are re-seeded from Postgres", async () => {
    const tenantId = await tenantWithBudget(1_000);
    const g = guard(redisBackend());
    const r = await g.reserve({ tenantId, runId: "a", stepNo: 0, estimate: 100 });
    await spend(tenantId, r, 50);
    // Usage Redis never heard of (recorded while Redis was flushed), then the flush itself.
    await t.db.tx((q) =>
      recordUsageTx(q, { tenantId, model: "test:model", inputTokens: 850, outputTokens: 0 }),
    );
    await deleteKeys(prefix);
    await expect(g.reserve({ tenantId, runId: "b", stepNo: 0, estimate: 200 })).rejects.toSatisfy((e) => {
      expect((e as CapstanError).details).toMatchObject({ used: 900 });
      return refusedWithBudgetCode(e);
    });
    expect((await g.reserve({ tenantId, runId: "b", stepNo: 1, estimate: 100 })).mode).toBe("shared");
  });

  it("counters are merged with Postgres every resyncMs (usage Redis missed is picked up)", async () => {
    const tenantId = await tenantWithBudget(1_000);
    const g = guard(redisBackend(), { resyncMs: 300 });
    (await g.reserve({ tenantId, runId: "a", stepNo: 0, estimate: 10 })).release().catch(() => {});
    await t.db.tx((q) =>
      recordUsageTx(q, { tenantId, model: "test:model", inputTokens: 950, outputTokens: 0 }),
    );
    await until(
      () =>
        g.reserve({ tenantId, runId: "b", stepNo: 0, estimate: 100 }).then(
          async (r) => {
            await r.release();
            return false;
          },
          (e: unknown) => refusedWithBudgetCode(e),
        ),
      { timeoutMs: 10_000, what: "the resync to see Postgres' usage" },
    );
  });

  it("day and month budgets are checked together; the tighter one refuses", async () => {
    const tenantId = await tenantWithBudget(10_000, 1_000);
    const g = guard(redisBackend());
    const r = await g.reserve({ tenantId, runId: "a", stepNo: 0, estimate: 800 });
    await expect(g.reserve({ tenantId, runId: "b", stepNo: 0, estimate: 300 })).rejects.toSatisfy((e) => {
      expect((e as CapstanError).details).toMatchObject({ period: "month", budget: 1_000 });
      return refusedWithBudgetCode(e);
    });
    await r.release();
  });

  it("a tenant without budgets holds nothing (no store access at all)", async () => {
    const tenantId = await tenantWithBudget(null, null);
    const g = guard(redisBackend("redis://127.0.0.1:1"));
    const r = await g.reserve({ tenantId, runId: "a", stepNo: 0, estimate: est(10, 20) });
    expect(r.mode).toBe("none");
    expect(r.maxOutputTokens).toBeUndefined();
    await r.settle({ inputTokens: 5, outputTokens: 5 });
  });
});

describe("budget guard with Redis down: Postgres only, one call per tenant per worker", () => {
  it("admits against Postgres and serialises a tenant's budgeted calls in the worker", async () => {
    const tenantId = await tenantWithBudget(1_000);
    // What the guard does, in order: its Postgres queries, its fallbacks, and when a settles.
    const order: string[] = [];
    const g = guard(redisBackend("redis://127.0.0.1:1"), {
      db: { query: (text, params) => (order.push("query"), t.db.query(text, params)) },
      hooks: { onDegraded: () => void order.push("fallback") },
    });
    const a = await g.reserve({ tenantId, runId: "a", stepNo: 0, estimate: est(600, 900) });
    expect(a.mode).toBe("fallback");
    order.length = 0;
    const b = g.reserve({ tenantId, runId: "b", stepNo: 0, estimate: est(600, 900) }).then(
      (r) => r,
      (e: unknown) => e,
    );
    // b has fallen back to Postgres; in the same step it queues for the tenant's slot, which a holds.
    await until(() => order.includes("fallback"), { what: "b to fall back" });
    order.push("a settles");
    await spend(tenantId, a, 600);
    // Postgres now says 600 used; 600 more does not fit.
    expect(refusedWithBudgetCode(await b)).toBe(true);
    // b checked Postgres only once a had settled: it waited for the slot (else its check would
    // have come right after its fallback, and counted a's 600 as in flight instead).
    expect(order.slice(order.indexOf("fallback"))).toEqual(["fallback", "a settles", "query"]);
    const c = await g.reserve({ tenantId, runId: "c", stepNo: 0, estimate: est(300, 900) });
    expect(c.mode).toBe("fallback");
    await c.release();
  });

  it("a wait for the slot honours the AbortSignal", async () => {
    const tenantId = await tenantWithBudget(1_000);
    const g = guard(redisBackend("redis://127.0.0.1:1"));
    const a = await g.reserve({ tenantId, runId: "a", stepNo: 0, estimate: 100 });
    const ac = new AbortController();
    const b = g.reserve({ tenantId, runId: "b", stepNo: 0, estimate: 100, signal: ac.signal });
    ac.abort(new Error("run cancelled"));
    await expect(b).rejects.toThrow("run cancelled");
    await a.release();
  });
});

describe("budget guard on the memory store (one process)", () => {
  it("holds the same bound with one worker", async () => {
    const N = 10_000;
    const e = est(500, 1_200);
    const tenantId = await tenantWithBudget(N);
    const store = createMemoryBudgetStore();
    opened.push(store);
    const g = guard({ budget: store });
    const out = await exhaust(tenantId, [g], 20, e);
    expect(out.otherErrors).toEqual([]);
    const used = (await readBudgetStatus(t.db, tenantId))!.dayUsed;
    expect(used).toBeLessThanOrEqual(N + e.max);
    await expect(g.reserve({ tenantId, runId: "late", stepNo: 0, estimate: e })).rejects.toSatisfy(
      refusedWithBudgetCode,
    );
  });

  it("lapses reservations and re-seeds like the Redis store", async () => {
    let now = Date.UTC(2025, 5, 10, 12);
    const store = createMemoryBudgetStore({ now: () => now });
    opened.push(store);
    const tenantId = await tenantWithBudget(1_000);
    const g = createBudgetGuard({
      db: t.db,
      store,
      logger: silentLogger(),
      budgetCacheMs: 0,
      reservationTtlMs: 1_000,
      inFlightWaitMs: 0,
      now: () => now,
    });
    opened.push(g);
    await g.reserve({ tenantId, runId: "a", stepNo: 0, estimate: 900 });
    await expect(g.reserve({ tenantId, runId: "b", stepNo: 0, estimate: 200 })).rejects.toSatisfy(
      refusedWithBudgetCode,
    );
    now += 1_001;
    const r = await g.reserve({ tenantId, runId: "b", stepNo: 1, estimate: 200 });
    expect(r.mode).toBe("shared");
    await r.release();
  });
});
