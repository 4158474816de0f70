/**
 * Pieces shared by the Redis and in-memory coordination backends, so that both
 * validate input identically and compute rate limits with the same arithmetic.
 * Not exported from ./index.ts.
 */
import { CapstanError } from "../errors.js";
import { formatEventId, parseEventId, type EventIdParts } from "./event-id.js";
import type { EventStreamOptions, RateLimitResult, RateLimitRule, StreamEvent } from "./types.js";

/** Upper bound on one read's `count`: larger requests are served this many at a time. */
export const MAX_READ_COUNT = 10_000;
/** setTimeout's ceiling; longer waits are clamped to it. */
export const MAX_TIMER_MS = 2_147_483_647;

function invalid(field: string, message: string): CapstanError {
  return new CapstanError("validation_failed", `${field}: ${message}`, { fields: [{ field, message }] });
}

export function checkEventStreamOptions(o: EventStreamOptions): EventStreamOptions {
  if (!Number.isSafeInteger(o.maxLen) || o.maxLen < 1)
    throw invalid("events.maxLen", "must be an integer ≥ 1");
  if (!Number.isSafeInteger(o.ttlMs) || o.ttlMs < 1) throw invalid("events.ttlMs", "must be an integer ≥ 1");
  return { maxLen: o.maxLen, ttlMs: o.ttlMs };
}

/** An event ready to append: its parsed id and its data already serialised. */
export interface PreparedEvent {
  id: EventIdParts;
  type: string;
  json: string;
}

/**
 * Validate a whole batch before anything is appended, so a bad event never leaves
 * a half-published batch. Publishable ids are canonical ("N" or "N.k" with k ≥ 1)
 * and greater than "0" (Redis refuses the entry id 0-0). Data is serialised here,
 * which also fixes what readers get back: exactly `JSON.parse(JSON.stringify(data))`.
 */
export function prepareEvents(events: StreamEvent[]): PreparedEvent[] {
  return events.map((e, i) => {
    const id = parseEventId(e.id);
    if (formatEventId(id) !== e.id)
      throw invalid(`events[${i}].id`, `not canonical: use "${formatEventId(id)}"`);
    if (id.n === 0 && id.k === 0)
      throw invalid(`events[${i}].id`, '"0" is the start cursor, not an event id');
    if (typeof e.type !== "string" || e.type.length === 0)
      throw invalid(`events[${i}].type`, "must be non-empty");
    if (typeof e.data !== "object" || e.data === null || Array.isArray(e.data)) {
      throw invalid(`events[${i}].data`, "must be a JSON object");
    }
    let json: string;
    try {
      json = JSON.stringify(e.data);
    } catch (err) {
      throw new CapstanError("validation_failed", `events[${i}].data is not serialisable as JSON`, {
        fields: [{ field: `events[${i}].data`, message: "not serialisable as JSON" }],
        cause: err,
      });
    }
    return { id, type: e.type, json };
  });
}

export interface ReadParams {
  after: EventIdParts;
  count: number;
  blockMs: number;
}

/** Validate `read` arguments: a valid cursor, count ≥ 1 (clamped to MAX_READ_COUNT), blockMs ≥ 0. */
export function checkRead(afterId: string, opts: { count: number; blockMs?: number }): ReadParams {
  const after = parseEventId(afterId);
  if (!Number.isInteger(opts.count) || opts.count < 1) throw invalid("count", "must be an integer ≥ 1");
  const blockMs = opts.blockMs ?? 0;
  if (!Number.isFinite(blockMs) || blockMs < 0) throw invalid("blockMs", "must be a finite number ≥ 0");
  return {
    after,
    count: Math.min(opts.count, MAX_READ_COUNT),
    blockMs: Math.min(Math.ceil(blockMs), MAX_TIMER_MS),
  };
}

/** Cache TTLs are whole milliseconds ≥ 1 (what Redis `PX` accepts). */
export function checkTtl(ttlMs: number): number {
  if (!Number.isFinite(ttlMs) || ttlMs <= 0) throw invalid("ttlMs", "must be a positive number");
  return Math.max(1, Math.ceil(ttlMs));
}

export function checkRateLimit(rule: RateLimitRule, cost: number): void {
  if (!Number.isFinite(rule.points) || rule.points <= 0) throw invalid("rule.points", "must be > 0");
  if (!Number.isFinite(rule.durationMs) || rule.durationMs <= 0)
    throw invalid("rule.durationMs", "must be > 0");
  if (!Number.isFinite(cost) || cost < 0) throw invalid("cost", "must be a finite number ≥ 0");
}

/**
 * Token bucket state. A bucket holds at most `points` tokens and refills
 * continuously at `points / durationMs` per ms; a full bucket is the same as no
 * bucket, which is what lets both backends forget idle keys.
 */
export interface BucketState {
  tokens: number;
  updatedAt: number;
}

/** Absorbs float noise such as 19999.999999998 ms, so ceil() does not overshoot by 1 ms. */
const EPS = 1e-6;

/**
 * One atomic take from a token bucket at time `now` (ms). Mirrored line by line
 * by ./redis/lua/take-tokens.lua; keep the two in step.
 *
 * - allowed when `cost` ≤ tokens (a cost above `points` is never allowed; its
 *   retryAfterMs is then longer than durationMs, which callers can treat as "too big");
 * - remaining = whole tokens left; resetMs = time until the bucket is full again
 *   (0 when full); retryAfterMs = time until `cost` tokens are available (0 when allowed).
 *
 * Returns the new state, or undefined when the bucket is full (forget it).
 */
export function takeTokens(
  prev: BucketState | undefined,
  rule: RateLimitRule,
  cost: number,
  now: number,
): { state: BucketState | undefined; result: RateLimitResult } {
  const { points, durationMs } = rule;
  let tokens = points;
  if (prev) {
    const elapsed = Math.max(0, now - prev.updatedAt);
    tokens = Math.min(points, prev.tokens + (elapsed * points) / durationMs);
  }
  let allowed = false;
  if (cost <= tokens + EPS) {
    tokens = Math.max(0, tokens - cost);
    allowed = true;
  }
  const resetMs = Math.max(0, Math.ceil(((points - tokens) * durationMs) / points - EPS));
  const retryAfterMs = allowed ? 0 : Math.max(1, Math.ceil(((cost - tokens) * durationMs) / points - EPS));
  return {
    state: resetMs > 0 ? { tokens, updatedAt: now } : undefined,
    result: {
      allowed,
      limit: points,
      remaining: Math.max(0, Math.floor(tokens + EPS)),
      resetMs,
      retryAfterMs,
    },
  };
}
