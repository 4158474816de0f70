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
import { lua, replyInts, type ScriptRunner } from "./redis.js";

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

/** Most expired reservations lapsed per key per operation (the rest go on the next one). */
const LAPSE_BATCH = 256;

/* ------------------------------------------------------------------------- */
/* Redis                                                                      */
/* ------------------------------------------------------------------------- */

// KEYS per period p (1-based): U = KEYS[4p-3] (hash used/sync), R = KEYS[4p-2] (reserved sum),
// Z = KEYS[4p-1] (zset id → expiry), A = KEYS[4p] (hash id → amount).
// ARGV: id, amount, resTtlMs, resyncMs, n, then per period: budget, seed ('' = none), usedTtlMs.
// Reply: {0} admitted | {2, i...} seed needed (0-based) | {1, i, used, reserved, budget} refused.
const RESERVE = lua(`
local id = ARGV[1]
local amount = tonumber(ARGV[2])
local resTtl = tonumber(ARGV[3])
local resync = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local used, reserved, budgets, need = {}, {}, {}, {}
for p = 1, n do
  local U, R, Z, A = KEYS[4*p-3], KEYS[4*p-2], KEYS[4*p-1], KEYS[4*p]
  local base = 5 + 3 * (p - 1)
  budgets[p] = tonumber(ARGV[base + 1])
  local seed = ARGV[base + 2]
  local usedTtl = tonumber(ARGV[base + 3])
  local gone = redis.call('ZRANGEBYSCORE', Z, '-inf', now, 'LIMIT', 0, ${LAPSE_BATCH})
  for _, m in ipairs(gone) do
    local a = tonumber(redis.call('HGET', A, m))
    if a then redis.call('DECRBY', R, a) end
    redis.call('HDEL', A, m)
    redis.call('ZREM', Z, m)
  end
  local st = redis.call('HMGET', U, 'used', 'sync')
  local u = tonumber(st[1])
  local s = tonumber(st[2])
  if seed ~= '' then
    local sv = tonumber(seed)
    if u == nil or sv > u then u = sv end
    redis.call('HSET', U, 'used', u, 'sync', now)
    redis.call('PEXPIRE', U, usedTtl)
  elseif u == nil or s == nil or now - s >= resync then
    need[#need + 1] = p - 1
  end
  used[p] = u or 0
  local r = tonumber(redis.call('GET', R) or '0') or 0
  if r < 0 then
    r = 0
    redis.call('DEL', R)
  end
  reserved[p] = r
end
if #need > 0 then return {2, unpack(need)} end
local worst, head = 1, nil
for p = 1, n do
  local h = budgets[p] - used[p] - reserved[p]
  if head == nil or h < head then
    head = h
    worst = p
  end
end
if head < amount then
  return {1, worst - 1, used[worst], reserved[worst], budgets[worst]}
end
local keep = resTtl * 2 + 60000
for p = 1, n do
  local R, Z, A = KEYS[4*p-2], KEYS[4*p-1], KEYS[4*p]
  redis.call('INCRBY', R, amount)
  redis.call('HSET', A, id, amount)
  redis.call('ZADD', Z, now + resTtl, id)
  redis.call('PEXPIRE', R, keep)
  redis.call('PEXPIRE', Z, keep)
  redis.call('PEXPIRE', A, keep)
end
return {0}
`);

// Same KEYS. ARGV: id, actual, n. Reply: {1} when the reservation was still live, else {0}.
const SETTLE = lua(`
local id = ARGV[1]
local actual = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local found = 0
for p = 1, n do
  local U, R, Z, A = KEYS[4*p-3], KEYS[4*p-2], KEYS[4*p-1], KEYS[4*p]
  local a = tonumber(redis.call('HGET', A, id))
  if a then
    redis.call('DECRBY', R, a)
    redis.call('HDEL', A, id)
    redis.call('ZREM', Z, id)
    found = 1
  end
  if actual > 0 and redis.call('EXISTS', U) == 1 then
    redis.call('HINCRBY', U, 'used', actual)
  end
end
return {found}
`);

// Same KEYS. ARGV: id, ttlMs, n. Reply: {1} extended, {0} lapsed.
const EXTEND = lua(`
local id = ARGV[1]
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local found = 0
local keep = ttl * 2 + 60000
for p = 1, n do
  local R, Z, A = KEYS[4*p-2], KEYS[4*p-1], KEYS[4*p]
  local score = tonumber(redis.call('ZSCORE', Z, id))
  if score and score > now then
    redis.call('ZADD', Z, 'XX', now + ttl, id)
    redis.call('PEXPIRE', R, keep)
    redis.call('PEXPIRE', Z, keep)
    redis.call('PEXPIRE', A, keep)
    found = 1
  end
end
return {found}
`);

/**
 * Budget counters in Redis under `${keyPrefix}bud:<period key>:{u,r,z,a}`. Every
 * failure is a `redis_unavailable` CapstanError (the guard then falls back to
 * Postgres, see src/cost/budget.ts).
 */
export function createRedisBudgetStore(redis: ScriptRunner, keyPrefix: string): BudgetStore {
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
      const r = replyInts(await redis.run(RESERVE, keys, args), "budget reserve");
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
      await redis.run(SETTLE, keys.flatMap(keysOf), [id, actual, keys.length]);
    },
    async extend(keys, id, ttlMs) {
      const r = replyInts(await redis.run(EXTEND, keys.flatMap(keysOf), [id, ttlMs, keys.length]), "extend");
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
