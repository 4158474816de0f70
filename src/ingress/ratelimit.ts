/**
 * Per-API-key rate limit, shared by every ingress replica through
 * `coord.rateLimiter` (a token bucket in Redis). Answers carry
 * `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds);
 * a refusal is 429 `rate_limited` with `Retry-After`.
 *
 * Redis is never the truth (docs/architecture.md#when-a-dependency-fails): when the limiter fails, the
 * configured policy decides — "open" (default) lets the request through, and
 * logs and counts it; "closed" answers 503 `redis_unavailable`.
 */
import type { FastifyReply } from "fastify";
import type { RateLimiter, RateLimitRule } from "../coord/types.js";
import { CapstanError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { IngressMetrics } from "./metrics.js";

export type RedisFailurePolicy = "open" | "closed";

export const DEFAULT_RATE_LIMIT: RateLimitRule = { points: 600, durationMs: 60_000 };

export interface RateLimitHookDeps {
  limiter: RateLimiter;
  rule: RateLimitRule;
  policy: RedisFailurePolicy;
  logger: Logger;
  metrics: IngressMetrics;
}

const seconds = (ms: number): number => Math.max(0, Math.ceil(ms / 1000));

export function createRateLimitCheck(deps: RateLimitHookDeps) {
  // Log the first failure of a burst, then at most every 10 s: a Redis outage
  // must not turn into one warning per request.
  let lastWarnAt = 0;

  return async function check(keyId: string, reply: FastifyReply): Promise<void> {
    let result;
    try {
      result = await deps.limiter.consume(`key:${keyId}`, deps.rule);
    } catch (err) {
      deps.metrics.rateLimiterErrors.inc({ policy: deps.policy });
      const now = Date.now();
      if (now - lastWarnAt > 10_000) {
        lastWarnAt = now;
        deps.logger.warn(
          { err, policy: deps.policy },
          deps.policy === "open"
            ? "rate limiter unavailable: failing open (requests are not rate limited)"
            : "rate limiter unavailable: failing closed (requests are refused)",
        );
      }
      if (deps.policy === "closed") {
        throw new CapstanError("redis_unavailable", "rate limiting is unavailable; retry shortly", {
          cause: err,
        });
      }
      return;
    }
    reply.header("ratelimit-limit", String(result.limit));
    reply.header("ratelimit-remaining", String(result.remaining));
    reply.header("ratelimit-reset", String(seconds(result.resetMs)));
    if (!result.allowed) {
      deps.metrics.base.rateLimitRejections.inc({ scope: "api_key" });
      throw new CapstanError(
        "rate_limited",
        `rate limit of ${result.limit} requests per ${seconds(deps.rule.durationMs)} s exceeded`,
        {
          details: { retryAfterSeconds: Math.max(1, seconds(result.retryAfterMs)) },
        },
      );
    }
  };
}
