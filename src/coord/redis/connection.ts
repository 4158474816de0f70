/**
 * One ioredis connection with the failure behaviour every Redis user of
 * Capstan relies on: an operation either completes or fails fast with a
 * `redis_unavailable` CapstanError — it never hangs — and the connection
 * reconnects by itself.
 *
 * - No offline queue (it would hold commands for an unbounded time during an
 *   outage). Instead: connected → send; a connection attempt in progress →
 *   wait for it, at most `readyTimeoutMs`; known to be down (between attempts)
 *   → fail at once. So while Redis is down callers get `redis_unavailable` in
 *   about a millisecond, and a fresh or restarting connection is still given a
 *   moment to come up.
 * - A command in flight when the socket drops fails at once; it is never
 *   resent later (a resent script could apply twice).
 * - A sent command fails after `commandTimeoutMs`; a socket silent for longer
 *   than any reply may take is destroyed and reconnected.
 * - Reconnection forever, 100, 200, 400 … ms apart, capped at `maxReconnectDelayMs`.
 * - One warning per outage in the log (not one per retry), one info when restored.
 */
import { Redis, type RedisOptions } from "ioredis";
import { CapstanError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import { mapRedisError } from "./errors.js";

export interface RedisTimeouts {
  /** TCP connect + handshake limit per attempt. Default 2,000 ms. */
  connectTimeoutMs?: number;
  /** A sent command with no reply after this fails. Default 2,000 ms. */
  commandTimeoutMs?: number;
  /**
   * How long a command waits for a connection attempt in progress (start-up, reconnect)
   * before failing. Between attempts commands fail at once. Default 1,000 ms.
   */
  readyTimeoutMs?: number;
  /** Cap on the delay between reconnect attempts (exponential from 100 ms). Default 2,000 ms. */
  maxReconnectDelayMs?: number;
}

export interface RedisConnectionOptions extends RedisTimeouts {
  url: string;
  /** The client name in `CLIENT LIST`, e.g. "capstan:cmd". */
  name: string;
  /** Names the connection in log lines, e.g. "cmd". */
  role: string;
  logger: Logger;
  /**
   * For a connection that sends `XREAD BLOCK` of at most this many ms: no command
   * timeout (a blocked read is meant to wait); the socket timeout covers the block.
   */
  blockingMs?: number;
}

export interface RedisConnection {
  readonly client: Redis;
  /** The resolved `readyTimeoutMs`. */
  readonly readyTimeoutMs: number;
  /** Resolves once connected; rejects with `redis_unavailable` as described above. */
  ready(timeoutMs?: number): Promise<void>;
  /** One operation: bounded wait for the connection, every failure mapped by ./errors.ts. */
  exec<T>(op: string, fn: (client: Redis) => Promise<T>): Promise<T>;
  /**
   * Idempotent. `graceful`: QUIT when connected (bounded), so replies in flight
   * still arrive; otherwise (and for a blocking connection, whose QUIT would
   * queue behind a blocked XREAD) drop the socket at once.
   */
  close(graceful: boolean): Promise<void>;
}

/** A promise that rejects with `redis_unavailable` after `ms`; the loser of the race is still handled. */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new CapstanError("redis_unavailable", `${what} timed out after ${ms}ms`)),
      ms,
    );
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The ioredis options that implement the contract above. */
function clientOptions(opts: RedisConnectionOptions): RedisOptions {
  const commandTimeoutMs = opts.commandTimeoutMs ?? 2_000;
  const maxReconnectDelayMs = opts.maxReconnectDelayMs ?? 2_000;
  const common: RedisOptions = {
    connectionName: opts.name,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    connectTimeout: opts.connectTimeoutMs ?? 2_000,
    retryStrategy: (times: number) => Math.min(50 * 2 ** Math.min(times, 10), maxReconnectDelayMs),
    lazyConnect: false,
  };
  if (opts.blockingMs !== undefined) {
    // No commandTimeout: XREAD BLOCK is meant to wait. A dead socket is caught here instead.
    return { ...common, socketTimeout: opts.blockingMs + commandTimeoutMs + 1_000 };
  }
  // A socket that stops answering (partition, paused server) is torn down and reconnected.
  return { ...common, commandTimeout: commandTimeoutMs, socketTimeout: commandTimeoutMs + 3_000 };
}

export function openRedisConnection(opts: RedisConnectionOptions): RedisConnection {
  const { role } = opts;
  const log = opts.logger;
  const readyTimeoutMs = opts.readyTimeoutMs ?? 1_000;
  const client = new Redis(opts.url, clientOptions(opts));
  const waiting = new Set<{ resolve(): void; reject(err: Error): void }>();
  let down = false;
  let ended = false;

  client.on("ready", () => {
    if (down) log.info({ role }, "redis connection restored");
    down = false;
    for (const w of [...waiting]) w.resolve();
  });
  client.on("error", (err: Error) => {
    if (down || ended) return;
    down = true;
    log.warn({ role, err: err.message }, "redis connection error; reconnecting");
  });
  // The attempt being waited for failed (or the connection dropped): release waiters now.
  const failWaiters = (why: string): void => {
    if (waiting.size === 0) return;
    const err = new CapstanError("redis_unavailable", why);
    for (const w of [...waiting]) w.reject(err);
  };
  client.on("close", () => failWaiters("redis connection lost"));
  client.on("end", () => failWaiters("redis connection closed"));

  async function ready(timeoutMs = readyTimeoutMs): Promise<void> {
    const status = client.status;
    if (status === "ready") return;
    if (ended || status === "end") throw new CapstanError("redis_unavailable", "redis connection is closed");
    if (status === "reconnecting" || status === "close") {
      throw new CapstanError("redis_unavailable", "redis is unreachable (reconnecting)");
    }
    await new Promise<void>((resolve, reject) => {
      const w = {
        resolve: () => {
          waiting.delete(w);
          clearTimeout(timer);
          resolve();
        },
        reject: (err: Error) => {
          waiting.delete(w);
          clearTimeout(timer);
          reject(err);
        },
      };
      const timer = setTimeout(
        () =>
          w.reject(
            new CapstanError("redis_unavailable", `redis not connected after ${timeoutMs}ms (${status})`),
          ),
        timeoutMs,
      );
      waiting.add(w);
    });
  }

  return {
    client,
    readyTimeoutMs,
    ready,
    async exec(op, fn) {
      await ready();
      try {
        return await fn(client);
      } catch (err) {
        throw mapRedisError(op, err);
      }
    },
    async close(graceful) {
      if (ended) return;
      ended = true;
      if (graceful && client.status === "ready") {
        try {
          await withTimeout(client.quit(), 500, "QUIT");
          return;
        } catch {
          // fall through to a hard disconnect
        }
      }
      client.disconnect();
    },
  };
}
