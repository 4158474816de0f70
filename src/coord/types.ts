/**
 * Coordination interfaces: ephemeral state that may vanish at any time
 * (Redis flush or restart) without breaking correctness. Two implementations
 * of each: Redis (production) and in-memory (embedded `capstan dev`), both
 * held to one conformance suite.
 */

/**
 * A run event as streamed. `id` is the SSE event id:
 * - a coarse event (persisted in Postgres too) has id "N" (N = 1, 2, …, gap-free per run);
 * - a token delta has id "N.k": the k-th delta (k ≥ 1) after coarse event N.
 * Ids are strictly increasing in (N, k) order. In Redis the entry id is exactly `N-k`
 * (coarse: `N-0`), so Redis itself refuses a stale or duplicate id.
 */
export interface StreamEvent {
  id: string;
  type: string;
  data: Record<string, unknown>;
}

export interface EventStreamOptions {
  /** Max entries kept per run stream (approximate trim). */
  maxLen: number;
  /** Stream TTL, refreshed on every publish. */
  ttlMs: number;
}

export interface EventStream {
  /**
   * Append events to the run's stream. Events whose id is not greater than the
   * stream's last id are dropped (a fenced-out zombie, or a re-publish) and not
   * counted. Returns how many were appended.
   */
  publish(runId: string, events: StreamEvent[]): Promise<number>;
  /**
   * Events with id greater than `afterId` ("0" for the start), at most `count`,
   * in order. With `blockMs` > 0 and nothing to return, waits up to that long
   * for new events (or until `signal` aborts) before returning [].
   */
  read(
    runId: string,
    afterId: string,
    opts: { count: number; blockMs?: number; signal?: AbortSignal },
  ): Promise<StreamEvent[]>;
  /** Whether the run's stream exists at all (it is gone after a flush or its TTL). */
  exists(runId: string): Promise<boolean>;
  close(): Promise<void>;
}

export interface RateLimitRule {
  /** Tokens in the bucket (burst). */
  points: number;
  /** Window over which `points` refill. */
  durationMs: number;
}

export interface RateLimitResult {
  allowed: boolean;
  limit: number;
  remaining: number;
  /** Ms until the window resets (for RateLimit-Reset). */
  resetMs: number;
  /** Ms the caller should wait before retrying (for Retry-After); 0 when allowed. */
  retryAfterMs: number;
}

export interface RateLimiter {
  /** Consume `cost` points of `key` under `rule`, atomically across all processes. */
  consume(key: string, rule: RateLimitRule, cost?: number): Promise<RateLimitResult>;
  close(): Promise<void>;
}

/** A TTL key-value cache (idempotency fast path, response caches). Loss only costs time or money. */
export interface KvCache {
  get(key: string): Promise<string | null>;
  set(key: string, value: string, ttlMs: number): Promise<void>;
  /** Set only if absent; true when this call set it. */
  setIfAbsent(key: string, value: string, ttlMs: number): Promise<boolean>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}

/** One coordination backend: what a process gets from Redis, or from memory. */
export interface Coordination {
  readonly kind: "redis" | "memory";
  events: EventStream;
  rateLimiter: RateLimiter;
  cache: KvCache;
  /** Is the backend reachable right now (for /readyz and fail-open/closed policy)? */
  ping(): Promise<boolean>;
  close(): Promise<void>;
}
