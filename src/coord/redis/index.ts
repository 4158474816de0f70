/**
 * Coordination on Redis (production). Redis is never the truth here: it may be
 * flushed or restarted at any instant, so every operation either completes or
 * fails fast with a `redis_unavailable` CapstanError — it never hangs — and
 * the connections reconnect by themselves (./connection.ts).
 *
 * Connections (owned by this object, closed by `close()`):
 * - `cmd` ("<name>:cmd"): every ordinary command, bounded as in ./connection.ts.
 * - `blk` ("<name>:blk"): every blocked `read`, multiplexed onto one
 *   `XREAD BLOCK` by ./blocking-reader.ts (which says how, and what it promises).
 *
 * Keys: `${keyPrefix}ev:${runId}` (stream, ./events.ts), `${keyPrefix}rl:${key}`
 * (bucket, ./rate-limiter.ts), `${keyPrefix}kv:${key}` (cache). Multi-key
 * commands span several run streams, so this is for standalone Redis (or one
 * hash slot), not Redis Cluster.
 *
 * The connection layer here (connection, errors, scripts) is also what the
 * cost stores (src/cost) use for their own connection.
 */
import type { Redis } from "ioredis";
import { CapstanError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import { checkEventStreamOptions, checkTtl } from "../internal.js";
import type { Coordination, EventStreamOptions, KvCache } from "../types.js";
import { BlockingReader } from "./blocking-reader.js";
import { openRedisConnection, withTimeout, type RedisTimeouts } from "./connection.js";
import { createRedisEventStream } from "./events.js";
import { createRedisRateLimiter } from "./rate-limiter.js";

export interface RedisCoordinationOptions extends RedisTimeouts {
  url: string;
  /** Prepended to every key, e.g. "capstan:". */
  keyPrefix: string;
  logger: Logger;
  events: EventStreamOptions;
  /** `ping()` answers false after this. Default 1,000 ms. */
  pingTimeoutMs?: number;
  /** Most concurrently blocked `read` calls; one more is refused with `redis_unavailable`. Default 10,000. */
  maxBlockedReaders?: number;
  /** Longest single `XREAD BLOCK` of the multiplexer (see ./blocking-reader.ts). Default 2,000 ms. */
  blockSliceMs?: number;
  /** Client name prefix in `CLIENT LIST` ("<name>:cmd", "<name>:blk"). Default "capstan". */
  connectionName?: string;
}

export function createRedisCoordination(opts: RedisCoordinationOptions): Coordination {
  // Validated before any connection opens, so bad options leak nothing.
  const eventOptions = checkEventStreamOptions(opts.events);
  // Loads its Lua script from disk: also before any connection opens.
  const rateLimiter = createRedisRateLimiter(exec, opts.keyPrefix);
  const log = opts.logger.child({ component: "coord.redis" });
  const pingTimeoutMs = opts.pingTimeoutMs ?? 1_000;
  const blockSliceMs = opts.blockSliceMs ?? 2_000;
  const name = opts.connectionName ?? "capstan";
  const open = (role: "cmd" | "blk", blockingMs?: number) =>
    openRedisConnection({
      url: opts.url,
      name: `${name}:${role}`,
      role,
      logger: log,
      connectTimeoutMs: opts.connectTimeoutMs,
      commandTimeoutMs: opts.commandTimeoutMs,
      readyTimeoutMs: opts.readyTimeoutMs,
      maxReconnectDelayMs: opts.maxReconnectDelayMs,
      blockingMs,
    });
  const cmd = open("cmd");
  const blk = open("blk", blockSliceMs);
  const blocking = new BlockingReader(
    blk,
    cmd,
    { blockSliceMs, maxBlocked: opts.maxBlockedReaders ?? 10_000 },
    log,
  );
  let closed = false;

  /** Every command of this object runs on `cmd`, and none after `close()`. */
  async function exec<T>(op: string, fn: (r: Redis) => Promise<T>): Promise<T> {
    if (closed) throw new CapstanError("redis_unavailable", "redis coordination is closed");
    return cmd.exec(op, fn);
  }

  const kvKey = (key: string): string => `${opts.keyPrefix}kv:${key}`;
  const cache: KvCache = {
    async get(key) {
      return exec("cache get", (r) => r.get(kvKey(key)));
    },
    async set(key, value, ttlMs) {
      const ttl = checkTtl(ttlMs);
      await exec("cache set", (r) => r.set(kvKey(key), value, "PX", ttl));
    },
    async setIfAbsent(key, value, ttlMs) {
      const ttl = checkTtl(ttlMs);
      return (await exec("cache setIfAbsent", (r) => r.set(kvKey(key), value, "PX", ttl, "NX"))) === "OK";
    },
    async delete(key) {
      await exec("cache delete", (r) => r.del(kvKey(key)));
    },
    async close() {},
  };

  return {
    kind: "redis",
    events: createRedisEventStream({
      exec,
      blocking,
      isClosed: () => closed,
      keyPrefix: opts.keyPrefix,
      options: eventOptions,
      logger: log,
    }),
    rateLimiter,
    cache,
    /** Never throws; answers within about `pingTimeoutMs`. */
    async ping() {
      if (closed) return false;
      const started = Date.now();
      try {
        await cmd.ready(pingTimeoutMs);
        const left = Math.max(1, pingTimeoutMs - (Date.now() - started));
        return (await withTimeout(cmd.client.ping(), left, "PING")) === "PONG";
      } catch {
        return false;
      }
    },
    /** Idempotent: wakes blocked readers with [], then closes both connections. */
    async close() {
      if (closed) return;
      closed = true;
      blocking.close();
      await Promise.all([cmd.close(true), blk.close(false)]);
    },
  };
}
