/**
 * The token-bucket rate limiter on Redis: one bucket per key at
 * `${keyPrefix}rl:${key}`, taken atomically by ./lua/take-tokens.lua (which
 * mirrors `takeTokens` of ../internal.ts, the in-memory backend's arithmetic).
 */
import { checkRateLimit } from "../internal.js";
import type { RateLimiter } from "../types.js";
import type { RedisConnection } from "./connection.js";
import { malformed } from "./errors.js";
import { loadScript, replyInts } from "./scripts.js";

export function createRedisRateLimiter(exec: RedisConnection["exec"], keyPrefix: string): RateLimiter {
  const takeTokens = loadScript(new URL("./lua/take-tokens.lua", import.meta.url));
  return {
    async consume(key, rule, cost = 1) {
      checkRateLimit(rule, cost);
      const k = `${keyPrefix}rl:${key}`;
      const reply = await exec("rate limit", (r) =>
        takeTokens.run(r, [k], [rule.points, rule.durationMs, cost]),
      );
      const ints = replyInts(reply, "rate limit script");
      if (ints.length !== 4) throw malformed("rate limit script");
      const [allowed, remaining, resetMs, retryAfterMs] = ints as [number, number, number, number];
      return { allowed: allowed === 1, limit: rule.points, remaining, resetMs, retryAfterMs };
    },
    async close() {},
  };
}
