/**
 * In-process coordination for the embedded `capstan dev` mode: the same
 * contracts as the Redis backend (held to the same conformance suite), for a
 * single process. Everything is bounded: streams are trimmed to `maxLen` and
 * expire after `ttlMs`, cache entries expire and are capped, idle rate-limit
 * buckets are forgotten, and the number of blocked readers is capped. Expiry
 * is lazy (checked on access) plus a periodic sweep on an unref'd timer, so an
 * idle process neither leaks nor is kept alive by it.
 */
import { CapstanError } from "../errors.js";
import { compareEventIdParts, formatEventId, type EventIdParts } from "./event-id.js";
import {
  checkEventStreamOptions,
  checkRateLimit,
  checkRead,
  checkTtl,
  prepareEvents,
  takeTokens,
  type BucketState,
} from "./internal.js";
import type {
  Coordination,
  EventStream,
  EventStreamOptions,
  KvCache,
  RateLimiter,
  RateLimitResult,
  RateLimitRule,
  StreamEvent,
} from "./types.js";

export interface MemoryCoordinationOptions {
  events: EventStreamOptions;
  /** Most cache entries kept; beyond it the least recently written are evicted. Default 100,000. */
  cacheMaxEntries?: number;
  /** Most concurrently blocked `read` calls; one more is refused with `redis_unavailable`. Default 10,000. */
  maxBlockedReaders?: number;
  /** Period of the expiry sweep. Default 10,000 ms. */
  sweepIntervalMs?: number;
}

interface StoredEvent {
  id: EventIdParts;
  type: string;
  json: string;
}

interface RunStream {
  /** Strictly increasing by id; at most maxLen long. */
  entries: StoredEvent[];
  /** Highest id ever appended (kept when entries are trimmed, as Redis does). */
  lastId: EventIdParts;
  expiresAt: number;
}

interface Waiter {
  after: EventIdParts;
  count: number;
  finish(events: StreamEvent[]): void;
}

function closedError(): CapstanError {
  return new CapstanError("internal", "memory coordination is closed");
}

/** Index of the first entry with id > after (entries are sorted). */
function firstAfter(entries: StoredEvent[], after: EventIdParts): number {
  let lo = 0;
  let hi = entries.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (compareEventIdParts(entries[mid]!.id, after) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function toEvent(e: StoredEvent): StreamEvent {
  // Parsed afresh on every read: callers get their own copy, never shared state.
  return { id: formatEventId(e.id), type: e.type, data: JSON.parse(e.json) as Record<string, unknown> };
}

export function createMemoryCoordination(opts: MemoryCoordinationOptions): Coordination {
  const evOpts = checkEventStreamOptions(opts.events);
  const cacheMax = opts.cacheMaxEntries ?? 100_000;
  const maxBlocked = opts.maxBlockedReaders ?? 10_000;
  const sweepMs = opts.sweepIntervalMs ?? 10_000;

  let closed = false;
  /** After `events.close()`: reads no longer wait (as in the Redis backend). */
  let eventsClosed = false;
  const streams = new Map<string, RunStream>();
  const waiters = new Map<string, Set<Waiter>>();
  let blockedCount = 0;
  const buckets = new Map<string, BucketState & { expiresAt: number }>();
  const cacheEntries = new Map<string, { value: string; expiresAt: number }>();

  /** The run's live stream, dropping it first if its TTL has passed. */
  function liveStream(runId: string, now = Date.now()): RunStream | undefined {
    const s = streams.get(runId);
    if (s && s.expiresAt <= now) {
      streams.delete(runId);
      return undefined;
    }
    return s;
  }

  function collect(runId: string, after: EventIdParts, count: number): StreamEvent[] {
    const s = liveStream(runId);
    if (!s) return [];
    const from = firstAfter(s.entries, after);
    return s.entries.slice(from, from + count).map(toEvent);
  }

  function sweep(): void {
    const now = Date.now();
    for (const [runId, s] of streams) if (s.expiresAt <= now) streams.delete(runId);
    for (const [k, e] of cacheEntries) if (e.expiresAt <= now) cacheEntries.delete(k);
    for (const [k, b] of buckets) if (b.expiresAt <= now) buckets.delete(k);
  }
  const sweeper = setInterval(sweep, sweepMs);
  sweeper.unref();

  const events: EventStream = {
    async publish(runId, batch) {
      if (closed) throw closedError();
      const prepared = prepareEvents(batch);
      if (prepared.length === 0) return 0;
      const now = Date.now();
      let s = liveStream(runId, now);
      let appended = 0;
      for (const e of prepared) {
        // Same rule as Redis XADD with an explicit id: not above the top → refused.
        if (s && compareEventIdParts(e.id, s.lastId) <= 0) continue;
        if (!s) {
          s = { entries: [], lastId: e.id, expiresAt: 0 };
          streams.set(runId, s);
        }
        s.entries.push({ id: e.id, type: e.type, json: e.json });
        s.lastId = e.id;
        appended++;
      }
      if (!s) return 0;
      if (s.entries.length > evOpts.maxLen) s.entries.splice(0, s.entries.length - evOpts.maxLen);
      s.expiresAt = now + evOpts.ttlMs;
      if (appended > 0) {
        const ws = waiters.get(runId);
        if (ws) {
          for (const w of [...ws]) {
            const got = collect(runId, w.after, w.count);
            if (got.length > 0) w.finish(got);
          }
        }
      }
      return appended;
    },

    async read(runId, afterId, readOpts) {
      if (closed) throw closedError();
      const { after, count, blockMs } = checkRead(afterId, readOpts);
      const now = collect(runId, after, count);
      const signal = readOpts.signal;
      if (now.length > 0 || blockMs === 0 || signal?.aborted || eventsClosed) return now;
      if (blockedCount >= maxBlocked) {
        throw new CapstanError("redis_unavailable", `too many blocked stream readers (limit ${maxBlocked})`);
      }
      return new Promise<StreamEvent[]>((resolve) => {
        let set = waiters.get(runId);
        if (!set) {
          set = new Set();
          waiters.set(runId, set);
        }
        const mine = set;
        const onAbort = (): void => w.finish([]);
        const timer = setTimeout(() => w.finish([]), blockMs);
        const w: Waiter = {
          after,
          count,
          finish(result) {
            if (!mine.delete(w)) return; // already finished
            if (mine.size === 0 && waiters.get(runId) === mine) waiters.delete(runId);
            blockedCount--;
            clearTimeout(timer);
            signal?.removeEventListener("abort", onAbort);
            resolve(result);
          },
        };
        mine.add(w);
        blockedCount++;
        signal?.addEventListener("abort", onAbort, { once: true });
      });
    },

    async exists(runId) {
      if (closed) throw closedError();
      return liveStream(runId) !== undefined;
    },

    /**
     * Wakes every blocked reader with [], and later reads no longer wait. The store itself
     * lives until the Coordination closes.
     */
    async close() {
      eventsClosed = true;
      for (const set of [...waiters.values()]) for (const w of [...set]) w.finish([]);
    },
  };

  const rateLimiter: RateLimiter = {
    async consume(key: string, rule: RateLimitRule, cost = 1): Promise<RateLimitResult> {
      if (closed) throw closedError();
      checkRateLimit(rule, cost);
      const now = Date.now();
      const prev = buckets.get(key);
      const { state, result } = takeTokens(prev && prev.expiresAt > now ? prev : undefined, rule, cost, now);
      if (state) buckets.set(key, { ...state, expiresAt: now + result.resetMs });
      else buckets.delete(key);
      return result;
    },
    async close() {},
  };

  function liveEntry(key: string): { value: string; expiresAt: number } | undefined {
    const e = cacheEntries.get(key);
    if (e && e.expiresAt <= Date.now()) {
      cacheEntries.delete(key);
      return undefined;
    }
    return e;
  }

  function put(key: string, value: string, ttlMs: number): void {
    // Delete first so insertion order is write order: eviction takes the oldest write.
    cacheEntries.delete(key);
    cacheEntries.set(key, { value, expiresAt: Date.now() + ttlMs });
    while (cacheEntries.size > cacheMax) {
      const oldest = cacheEntries.keys().next();
      if (oldest.done) break;
      cacheEntries.delete(oldest.value);
    }
  }

  const cache: KvCache = {
    async get(key) {
      if (closed) throw closedError();
      return liveEntry(key)?.value ?? null;
    },
    async set(key, value, ttlMs) {
      if (closed) throw closedError();
      put(key, value, checkTtl(ttlMs));
    },
    async setIfAbsent(key, value, ttlMs) {
      if (closed) throw closedError();
      const ttl = checkTtl(ttlMs);
      if (liveEntry(key)) return false;
      put(key, value, ttl);
      return true;
    },
    async delete(key) {
      if (closed) throw closedError();
      cacheEntries.delete(key);
    },
    async close() {},
  };

  return {
    kind: "memory",
    events,
    rateLimiter,
    cache,
    async ping() {
      return !closed;
    },
    /** Idempotent: wakes blocked readers with [], stops the sweep, drops all state. */
    async close() {
      if (closed) return;
      closed = true;
      clearInterval(sweeper);
      await events.close();
      streams.clear();
      buckets.clear();
      cacheEntries.clear();
    },
  };
}
