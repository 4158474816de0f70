/**
 * Sliding-window request and token counters for shared provider limits
 * (src/cost/provider-limits.ts), plus a shared cool-down. Redis (one Lua
 * script per operation, shared by every worker) and process memory (one
 * process), with one semantics.
 *
 * Why a sliding log and not the coordination token bucket: a token bucket of
 * `tpm` tokens refilling over a minute lets through up to 2 × tpm in some
 * 60-second window (a full bucket, then a minute of refill). A provider that
 * counts per window would see that. The log admits a request only if the
 * requests and tokens admitted in the last `windowMs` (including it) stay
 * within the limits, so no window of that length ever holds more.
 *
 * Per limit key: a sorted set (request id → time), a hash (id → tokens), the
 * running token sum, and the cool-down key. A request's time is its
 * admission, moved to its finish when the caller reports it (`finish`).
 * Entries older than the window are dropped (with their tokens) by the next
 * operation.
 */
import { CapstanError } from "../errors.js";
import type { RedisConnection } from "../coord/redis/connection.js";
import { loadScript, replyInts } from "../coord/redis/scripts.js";

export interface WindowRule {
  /** Requests per window (0 or undefined: unlimited). */
  rpm?: number | undefined;
  /** Tokens per window (0 or undefined: unlimited). */
  tpm?: number | undefined;
  windowMs: number;
}

export type AcquireResult =
  { ok: true } | { ok: false; retryAfterMs: number; reason: "rpm" | "tpm" | "cooldown" };

export interface LimitStore {
  readonly kind: "redis" | "memory";
  /**
   * Admit one request of `tokens` under `rule` now, or say how long to wait.
   * A request larger than `tpm` is admitted alone (into an empty window), so
   * it is delayed, never refused forever.
   */
  acquire(key: string, rule: WindowRule, id: string, tokens: number): Promise<AcquireResult>;
  /**
   * The admitted request `id` finished now, having used `tokens`: it counts
   * those tokens, and stays in the window until now + windowMs (see
   * src/cost/provider-limits.ts for why: its arrival at the provider was
   * somewhere between admission and now).
   */
  finish(key: string, rule: WindowRule, id: string, tokens: number): Promise<void>;
  /** Make every acquire of `key` wait at least `ms` from now (a provider 429). Never shortens one. */
  cooldown(key: string, ms: number): Promise<void>;
  close(): Promise<void>;
}

/** Most entries walked to compute a tpm wait (both stores; ./lua/limit-acquire.lua gets it as ARGV). */
const WALK_LIMIT = 1_000;

const REASONS = { 1: "rpm", 2: "tpm", 3: "cooldown" } as const;

function checkTokens(tokens: number): void {
  if (!Number.isSafeInteger(tokens) || tokens < 0) {
    throw new CapstanError("internal", `provider limit tokens must be an integer ≥ 0 (got ${tokens})`);
  }
}

function checkRule(rule: WindowRule): void {
  if (!Number.isSafeInteger(rule.windowMs) || rule.windowMs < 1) {
    throw new CapstanError(
      "internal",
      `provider limit windowMs must be a positive integer (got ${rule.windowMs})`,
    );
  }
}

/* ------------------------------------------------------------------------- */
/* Redis                                                                      */
/* ------------------------------------------------------------------------- */

/**
 * Windows in Redis under `${keyPrefix}pl:{<limit key>}:{log,amt,sum,cool}`, one
 * script per operation (./lua/limit-*.lua, whose headers give KEYS and ARGV).
 * The connection belongs to the caller.
 */
export function createRedisLimitStore(redis: RedisConnection, keyPrefix: string): LimitStore {
  const acquireScript = loadScript(new URL("./lua/limit-acquire.lua", import.meta.url));
  const finishScript = loadScript(new URL("./lua/limit-finish.lua", import.meta.url));
  const cooldownScript = loadScript(new URL("./lua/limit-cooldown.lua", import.meta.url));
  const keysOf = (key: string): string[] => {
    const b = `${keyPrefix}pl:{${key}}`;
    return [`${b}:log`, `${b}:amt`, `${b}:sum`, `${b}:cool`];
  };
  return {
    kind: "redis",
    async acquire(key, rule, id, tokens) {
      checkTokens(tokens);
      checkRule(rule);
      const args = [id, tokens, rule.rpm ?? 0, rule.tpm ?? 0, rule.windowMs, WALK_LIMIT];
      const reply = await redis.exec("provider limit acquire", (c) =>
        acquireScript.run(c, keysOf(key), args),
      );
      const r = replyInts(reply, "provider limit");
      if (r[0] === 1) return { ok: true };
      const reason = REASONS[r[2] as 1 | 2 | 3];
      if (!reason) throw new CapstanError("internal", "malformed redis reply: provider limit");
      return { ok: false, retryAfterMs: Math.max(1, r[1]!), reason };
    },
    async finish(key, rule, id, tokens) {
      checkTokens(tokens);
      checkRule(rule);
      await redis.exec("provider limit finish", (c) =>
        finishScript.run(c, keysOf(key).slice(0, 3), [id, tokens, rule.windowMs]),
      );
    },
    async cooldown(key, ms) {
      const m = Math.max(1, Math.ceil(ms));
      await redis.exec("provider limit cooldown", (c) => cooldownScript.run(c, [keysOf(key)[3]!], [m]));
    },
    async close() {},
  };
}

/* ------------------------------------------------------------------------- */
/* Memory                                                                     */
/* ------------------------------------------------------------------------- */

interface MemoryWindow {
  /** Admission order = time order. */
  entries: { id: string; at: number; tokens: number }[];
  sum: number;
  coolUntil: number;
}

export function createMemoryLimitStore(
  opts: { now?: () => number; sweepIntervalMs?: number } = {},
): LimitStore {
  const now = opts.now ?? Date.now;
  const windows = new Map<string, MemoryWindow & { windowMs: number }>();

  const drop = (w: MemoryWindow, windowMs: number, t: number): void => {
    let i = 0;
    while (i < w.entries.length && w.entries[i]!.at <= t - windowMs) {
      w.sum -= w.entries[i]!.tokens;
      i++;
    }
    if (i > 0) w.entries.splice(0, i);
    if (w.sum < 0) w.sum = 0;
  };
  const sweeper = setInterval(() => {
    const t = now();
    for (const [key, w] of windows) {
      drop(w, w.windowMs, t);
      if (w.entries.length === 0 && w.coolUntil <= t) windows.delete(key);
    }
  }, opts.sweepIntervalMs ?? 60_000);
  sweeper.unref();

  const get = (key: string, windowMs: number): MemoryWindow & { windowMs: number } => {
    let w = windows.get(key);
    if (!w) {
      w = { entries: [], sum: 0, coolUntil: 0, windowMs };
      windows.set(key, w);
    }
    w.windowMs = windowMs;
    return w;
  };

  return {
    kind: "memory",
    async acquire(key, rule, id, tokens) {
      checkTokens(tokens);
      checkRule(rule);
      const t = now();
      const w = get(key, rule.windowMs);
      if (w.coolUntil > t) return { ok: false, retryAfterMs: w.coolUntil - t, reason: "cooldown" };
      drop(w, rule.windowMs, t);
      const rpm = rule.rpm ?? 0;
      const tpm = rule.tpm ?? 0;
      let wait = 0;
      let reason: "rpm" | "tpm" | undefined;
      const count = w.entries.length;
      if (rpm > 0 && count + 1 > rpm) {
        const e = w.entries[count - rpm];
        wait = e ? e.at + rule.windowMs - t : rule.windowMs;
        reason = "rpm";
      }
      if (tpm > 0 && w.sum > 0 && w.sum + Math.min(tokens, tpm) > tpm) {
        const need = w.sum + Math.min(tokens, tpm) - tpm;
        let freed = 0;
        let ww = rule.windowMs;
        for (const e of w.entries.slice(0, WALK_LIMIT)) {
          freed += e.tokens;
          if (freed >= need) {
            ww = e.at + rule.windowMs - t;
            break;
          }
        }
        if (ww > wait) {
          wait = ww;
          reason = "tpm";
        }
      }
      if (reason) return { ok: false, retryAfterMs: Math.max(1, wait), reason };
      w.entries.push({ id, at: t, tokens });
      w.sum += tokens;
      return { ok: true };
    },
    async finish(key, rule, id, tokens) {
      checkTokens(tokens);
      checkRule(rule);
      const w = get(key, rule.windowMs);
      const i = w.entries.findIndex((x) => x.id === id);
      if (i >= 0) {
        w.sum -= w.entries[i]!.tokens;
        w.entries.splice(i, 1);
      }
      // Latest finish last: entries stay ordered by time.
      w.entries.push({ id, at: now(), tokens });
      w.sum += tokens;
    },
    async cooldown(key, ms) {
      const w = windows.get(key) ?? get(key, 60_000);
      w.coolUntil = Math.max(w.coolUntil, now() + Math.max(1, Math.ceil(ms)));
    },
    async close() {
      clearInterval(sweeper);
      windows.clear();
    },
  };
}
