/**
 * Fast, shared budget counters for src/cost/budget.ts: per tenant and period,
 * the tokens used (seeded from Postgres) and the live reservations of calls
 * in flight, checked and changed atomically. Two implementations with one
 * semantics: Redis (a Lua script per operation, so every worker sees one
 * consistent state) and process memory (embedded `capstan dev`, one process).
 *
 * Per period key `k` (one tenant's UTC day or month) the state is:
 * - used: tokens settled so far (a hash `{used, sync}` in Redis; `sync` is
 *   when it was last merged with Postgres). Missing (first use, Redis flushed
 *   or restarted) or older than `resyncMs`: the caller is asked to seed it
 *   from Postgres, and the seed is merged with max(), which never loses a
 *   settlement made since (settlements count calls paid for, a superset of
 *   what the journal has).
 * - reservations: id → amount with an expiry. A reservation of a crashed
 *   worker is never settled; it lapses at its expiry, and the lapse is
 *   applied by the next operation on that key. Live holders extend theirs.
 * - reserved: the sum of live reservations, kept incrementally.
 *
 * Admission: a reservation of `amount` is admitted only if, for every period
 * given, used + reserved + amount ≤ budget; then it is added to all of them.
 * All or nothing, in one atomic step.
 */
import { CapstanError } from "../errors.js";
import type { RedisConnection } from "../coord/redis/connection.js";
import { loadScript, replyInts } from "../coord/redis/scripts.js";

export interface BudgetPeriodSpec {
  /**
   * Identifies one tenant's period, e.g. `{<tenantId>}:d:2025-01-31` (the `{…}`
   * hash tag keeps one tenant's keys in one cluster slot).
   */
  key: string;
  /** Tokens allowed in the period. */
  budget: number;
  /** Tokens used per Postgres: given only when the store asked for a seed. */
  seed?: number;
  /** Lifetime of the used counter (until a little after the period ends). */
  usedTtlMs: number;
}

export type StoreReserveResult =
  | { kind: "admitted" }
  /** The counters of these periods (indices into the request) need a seed from Postgres. */
  | { kind: "seed"; periods: number[] }
  /** Refused by the period with the least headroom (index into the request). */
  | { kind: "refused"; period: number; used: number; reserved: number; budget: number };

export interface BudgetStore {
  readonly kind: "redis" | "memory";
  reserve(
    periods: BudgetPeriodSpec[],
    id: string,
    amount: number,
    opts: { ttlMs: number; resyncMs: number },
  ): Promise<StoreReserveResult>;
  /** Drop the reservation (if still live) and add `actual` tokens to every period's used counter. */
  settle(keys: string[], id: string, actual: number): Promise<void>;
  /** Push the reservation's expiry to now + ttlMs; false when it already lapsed. */
  extend(keys: string[], id: string, ttlMs: number): Promise<boolean>;
  close(): Promise<void>;
}

/* ------------------------------------------------------------------------- */
/* Redis                                                                      */
/* ------------------------------------------------------------------------- */

/**
 * Budget counters in Redis under `${keyPrefix}bud:<period key>:{u,r,z,a}`, one
 * script per operation (./lua/budget-*.lua, whose headers give KEYS and ARGV).
 * Every failure is a `redis_unavailable` CapstanError (the guard then falls back
 * to Postgres, see src/cost/budget.ts). The connection belongs to the caller.
 */
export function createRedisBudgetStore(redis: RedisConnection, keyPrefix: string): BudgetStore {
  const reserveScript = loadScript(new URL("./lua/budget-reserve.lua", import.meta.url));
  const settleScript = loadScript(new URL("./lua/budget-settle.lua", import.meta.url));
  const extendScript = loadScript(new URL("./lua/budget-extend.lua", import.meta.url));
  const keysOf = (key: string): string[] => {
    const b = `${keyPrefix}bud:${key}`;
    return [`${b}:u`, `${b}:r`, `${b}:z`, `${b}:a`];
  };
  return {
    kind: "redis",
    async reserve(periods, id, amount, opts) {
      checkAmount(amount);
      const keys = periods.flatMap((p) => keysOf(p.key));
      const args: (string | number)[] = [id, amount, opts.ttlMs, opts.resyncMs, periods.length];
      for (const p of periods)
        args.push(p.budget, p.seed === undefined ? "" : p.seed, Math.max(1, p.usedTtlMs));
      const reply = await redis.exec("budget reserve", (c) => reserveScript.run(c, keys, args));
      const r = replyInts(reply, "budget reserve");
      switch (r[0]) {
        case 0:
          return { kind: "admitted" };
        case 2:
          return { kind: "seed", periods: r.slice(1) };
        case 1:
          return { kind: "refused", period: r[1]!, used: r[2]!, reserved: r[3]!, budget: r[4]! };
        default:
          throw new CapstanError("internal", "malformed redis reply: budget reserve");
      }
    },
    async settle(keys, id, actual) {
      checkAmount(actual, 0);
      await redis.exec("budget settle", (c) =>
        settleScript.run(c, keys.flatMap(keysOf), [id, actual, keys.length]),
      );
    },
    async extend(keys, id, ttlMs) {
      const reply = await redis.exec("budget extend", (c) =>
        extendScript.run(c, keys.flatMap(keysOf), [id, ttlMs, keys.length]),
      );
      const r = replyInts(reply, "budget extend");
      return r[0] === 1;
    },
    async close() {},
  };
}

function checkAmount(n: number, min = 0): void {
  if (!Number.isSafeInteger(n) || n < min) {
    throw new CapstanError("internal", `budget amount must be an integer ≥ ${min} (got ${n})`);
  }
}

/* ------------------------------------------------------------------------- */
/* Memory                                                                     */
/* ------------------------------------------------------------------------- */

interface MemoryPeriod {
  used: number | undefined;
  sync: number | undefined;
  usedExpiresAt: number;
  reserved: number;
  reservations: Map<string, { amount: number; expiresAt: number }>;
}

/**
 * The same semantics in process memory, for one process (embedded mode, and
 * the conformance tests). Idle periods are swept on an unref'd timer.
 */
export function createMemoryBudgetStore(
  opts: { now?: () => number; sweepIntervalMs?: number } = {},
): BudgetStore {
  const now = opts.now ?? Date.now;
  const periods = new Map<string, MemoryPeriod>();

  const get = (key: string): MemoryPeriod => {
    let p = periods.get(key);
    if (!p) {
      p = { used: undefined, sync: undefined, usedExpiresAt: 0, reserved: 0, reservations: new Map() };
      periods.set(key, p);
    }
    return p;
  };
  const lapse = (p: MemoryPeriod, t: number): void => {
    if (p.used !== undefined && p.usedExpiresAt <= t) {
      p.used = undefined;
      p.sync = undefined;
    }
    for (const [id, r] of p.reservations) {
      if (r.expiresAt <= t) {
        p.reserved -= r.amount;
        p.reservations.delete(id);
      }
    }
    if (p.reserved < 0) p.reserved = 0;
  };
  const sweeper = setInterval(() => {
    const t = now();
    for (const [key, p] of periods) {
      lapse(p, t);
      if (p.used === undefined && p.reservations.size === 0) periods.delete(key);
    }
  }, opts.sweepIntervalMs ?? 60_000);
  sweeper.unref();

  return {
    kind: "memory",
    async reserve(specs, id, amount, o) {
      checkAmount(amount);
      const t = now();
      const need: number[] = [];
      const state = specs.map((s, i) => {
        const p = get(s.key);
        lapse(p, t);
        if (s.seed !== undefined) {
          p.used = p.used === undefined ? s.seed : Math.max(p.used, s.seed);
          p.sync = t;
          p.usedExpiresAt = t + Math.max(1, s.usedTtlMs);
        } else if (p.used === undefined || p.sync === undefined || t - p.sync >= o.resyncMs) {
          need.push(i);
        }
        return p;
      });
      if (need.length > 0) return { kind: "seed", periods: need };
      let worst = 0;
      let head = Infinity;
      state.forEach((p, i) => {
        const h = specs[i]!.budget - (p.used ?? 0) - p.reserved;
        if (h < head) {
          head = h;
          worst = i;
        }
      });
      if (head < amount) {
        const p = state[worst]!;
        return {
          kind: "refused",
          period: worst,
          used: p.used ?? 0,
          reserved: p.reserved,
          budget: specs[worst]!.budget,
        };
      }
      for (const p of state) {
        p.reserved += amount;
        p.reservations.set(id, { amount, expiresAt: t + o.ttlMs });
      }
      return { kind: "admitted" };
    },
    async settle(keys, id, actual) {
      checkAmount(actual, 0);
      for (const key of keys) {
        const p = periods.get(key);
        if (!p) continue;
        const r = p.reservations.get(id);
        if (r) {
          p.reserved = Math.max(0, p.reserved - r.amount);
          p.reservations.delete(id);
        }
        if (actual > 0 && p.used !== undefined) p.used += actual;
      }
    },
    async extend(keys, id, ttlMs) {
      const t = now();
      let found = false;
      for (const key of keys) {
        const r = periods.get(key)?.reservations.get(id);
        if (r && r.expiresAt > t) {
          r.expiresAt = t + ttlMs;
          found = true;
        }
      }
      return found;
    },
    async close() {
      clearInterval(sweeper);
      periods.clear();
    },
  };
}
