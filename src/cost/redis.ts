/**
 * The Redis connection of the cost stores (budget counters, provider-limit
 * windows). They need atomic multi-key Lua scripts, which the coordination
 * interfaces (src/coord) do not offer, so cost control owns one small
 * connection of its own with the same failure behaviour as src/coord/redis.ts:
 * no offline queue, bounded waits, every failure a `redis_unavailable`
 * CapstanError within about `commandTimeoutMs`, reconnection in the background.
 *
 * Every key a script touches is passed in KEYS (standalone Redis; keys of one
 * tenant or one limit share a `{hash tag}`, so a cluster would also work).
 */
import { createHash } from "node:crypto";
import { Redis } from "ioredis";
import { CapstanError } from "../errors.js";
import type { Logger } from "../logger.js";

export interface LuaScript {
  readonly body: string;
  readonly sha: string;
}

export function lua(body: string): LuaScript {
  return { body, sha: createHash("sha1").update(body).digest("hex") };
}

/** Runs Lua scripts atomically on one backend. */
export interface ScriptRunner {
  /** Resolves with the script's reply; rejects with `redis_unavailable` (or `internal` for a script error). */
  run(script: LuaScript, keys: string[], args: (string | number)[]): Promise<unknown>;
  close(): Promise<void>;
}

export interface CostRedisOptions {
  url: string;
  logger: Logger;
  /** TCP connect + handshake limit per attempt. Default 2,000 ms. */
  connectTimeoutMs?: number;
  /** A sent command with no reply after this fails. Default 2,000 ms. */
  commandTimeoutMs?: number;
  /** How long a command waits for a connection attempt in progress. Default 1,000 ms. */
  readyTimeoutMs?: number;
  /** Cap on the delay between reconnect attempts. Default 2,000 ms. */
  maxReconnectDelayMs?: number;
}

/** Reply errors that mean "Redis cannot serve right now" rather than "this script is wrong". */
const TRANSIENT_REPLY = /^(LOADING|BUSY|MISCONF|OOM|READONLY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN)\b/;

function mapError(err: unknown): CapstanError {
  if (err instanceof CapstanError) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  if (e.name === "ReplyError" && !TRANSIENT_REPLY.test(e.message)) {
    return new CapstanError("internal", `redis script refused: ${e.message}`, { cause: e });
  }
  return new CapstanError("redis_unavailable", `redis script failed: ${e.message}`, { cause: e });
}

export function createCostRedis(opts: CostRedisOptions): ScriptRunner {
  const log = opts.logger.child({ component: "cost.redis" });
  const commandTimeoutMs = opts.commandTimeoutMs ?? 2_000;
  const readyTimeoutMs = opts.readyTimeoutMs ?? 1_000;
  const maxReconnectDelayMs = opts.maxReconnectDelayMs ?? 2_000;
  const client = new Redis(opts.url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    connectTimeout: opts.connectTimeoutMs ?? 2_000,
    commandTimeout: commandTimeoutMs,
    socketTimeout: commandTimeoutMs + 3_000,
    retryStrategy: (times: number) => Math.min(50 * 2 ** Math.min(times, 10), maxReconnectDelayMs),
    connectionName: "capstan:cost",
    lazyConnect: false,
  });
  let down = false;
  let closed = false;
  client.on("error", (err: Error) => {
    if (down || closed) return;
    down = true;
    log.warn({ err: err.message }, "redis connection error; reconnecting");
  });
  client.on("ready", () => {
    if (down) log.info("redis connection restored");
    down = false;
  });

  /** The wait for the connection attempt in progress, shared by every command that arrives meanwhile. */
  let pending: Promise<void> | undefined;

  /** Bounded wait for a connection attempt in progress; fail at once between attempts. */
  function ready(): Promise<void> {
    const status = client.status;
    if (status === "ready") return Promise.resolve();
    if (closed || status === "end")
      return Promise.reject(new CapstanError("redis_unavailable", "cost redis is closed"));
    if (status === "reconnecting" || status === "close") {
      return Promise.reject(new CapstanError("redis_unavailable", "redis is unreachable (reconnecting)"));
    }
    pending ??= new Promise<void>((resolve, reject) => {
      const done = (err?: Error): void => {
        clearTimeout(timer);
        client.off("ready", onReady);
        client.off("close", onClose);
        pending = undefined;
        if (err) reject(err);
        else resolve();
      };
      const onReady = (): void => done();
      const onClose = (): void => done(new CapstanError("redis_unavailable", "redis connection lost"));
      const timer = setTimeout(
        () =>
          done(
            new CapstanError(
              "redis_unavailable",
              `redis not connected after ${readyTimeoutMs}ms (${status})`,
            ),
          ),
        readyTimeoutMs,
      );
      client.once("ready", onReady);
      client.once("close", onClose);
    });
    return pending;
  }

  return {
    async run(script, keys, args) {
      await ready();
      try {
        try {
          return await client.evalsha(script.sha, keys.length, ...keys, ...args);
        } catch (err) {
          // Scripts vanish on restart and SCRIPT FLUSH: send the body once.
          if (err instanceof Error && err.message.startsWith("NOSCRIPT")) {
            return await client.eval(script.body, keys.length, ...keys, ...args);
          }
          throw err;
        }
      } catch (err) {
        throw mapError(err);
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      if (client.status === "ready") {
        let timer: NodeJS.Timeout | undefined;
        try {
          await Promise.race([
            client.quit(),
            new Promise((resolve) => {
              timer = setTimeout(resolve, 500);
            }),
          ]);
        } catch {
          // fall through to a hard disconnect
        } finally {
          clearTimeout(timer);
        }
      }
      client.disconnect();
    },
  };
}

/** Lua replies as integers; anything else is a malformed reply. */
export function replyInts(reply: unknown, what: string): number[] {
  if (!Array.isArray(reply)) throw new CapstanError("internal", `malformed redis reply: ${what}`);
  return reply.map((x: unknown) => {
    const n = typeof x === "number" ? x : typeof x === "string" ? Number(x) : NaN;
    if (!Number.isFinite(n)) throw new CapstanError("internal", `malformed redis reply: ${what}`);
    return n;
  });
}
