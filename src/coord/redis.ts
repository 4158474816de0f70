/**
 * Coordination on Redis (production). Redis is never the truth here
 * (docs/architecture.md#when-a-dependency-fails): it may be flushed or
 * restarted at any instant, so every operation either
 * completes or fails fast with a `redis_unavailable` CapstanError — it never
 * hangs — and the connections reconnect by themselves.
 *
 * Connections (owned by this object, closed by `close()`):
 * - `cmd`: every ordinary command. No offline queue: during a connection
 *   attempt a command waits at most `readyTimeoutMs`, between attempts it fails
 *   at once; a sent command fails after `commandTimeoutMs`; a socket silent for
 *   too long is destroyed and reconnected.
 * - `blk`: one connection for all blocked `read`s, multiplexed: a single
 *   `XREAD BLOCK` over every stream that has waiters. A reader that needs a key
 *   (or an older cursor) the in-flight call lacks interrupts it with
 *   `CLIENT UNBLOCK` from `cmd`; calls are also cut into slices of at most
 *   `blockSliceMs`, which bounds latency should UNBLOCK be unavailable (ACLs).
 *   So blocked readers cost no connections, are capped by `maxBlockedReaders`,
 *   and never delay ordinary commands. If the connection drops under a blocked
 *   read, that read rejects with `redis_unavailable` (the caller falls back or
 *   retries) instead of waiting out its `blockMs`.
 *
 * Streams are trimmed with `MAXLEN ~ maxLen`: Redis trims whole macro nodes, so a
 * stream holds between maxLen and about maxLen + 100 entries (stream-node-max-entries).
 *
 * Keys: `${keyPrefix}ev:${runId}` (stream), `${keyPrefix}rl:${key}` (bucket),
 * `${keyPrefix}kv:${key}` (cache). Multi-key commands span several run streams,
 * so this is for standalone Redis (or one hash slot), not Redis Cluster.
 */
import { createHash } from "node:crypto";
import { Redis, type RedisOptions } from "ioredis";
import { CapstanError } from "../errors.js";
import type { Logger } from "../logger.js";
import { compareEventIdParts, formatEventId, parseStreamId, type EventIdParts } from "./event-id.js";
import {
  checkEventStreamOptions,
  checkRateLimit,
  checkRead,
  checkTtl,
  MAX_READ_COUNT,
  prepareEvents,
} from "./internal.js";
import type {
  Coordination,
  EventStream,
  EventStreamOptions,
  KvCache,
  RateLimiter,
  RateLimitResult,
  StreamEvent,
} from "./types.js";

export interface RedisCoordinationOptions {
  url: string;
  /** Prepended to every key, e.g. "capstan:". */
  keyPrefix: string;
  logger: Logger;
  events: EventStreamOptions;
  /** TCP connect + handshake limit per attempt. Default 2,000 ms. */
  connectTimeoutMs?: number;
  /** A sent command with no reply after this fails. Default 2,000 ms. */
  commandTimeoutMs?: number;
  /**
   * How long a command waits for a connection attempt in progress (start-up, reconnect)
   * before failing. Between attempts commands fail at once. Default 1,000 ms.
   */
  readyTimeoutMs?: number;
  /** `ping()` answers false after this. Default 1,000 ms. */
  pingTimeoutMs?: number;
  /** Cap on the delay between reconnect attempts (exponential from 100 ms). Default 2,000 ms. */
  maxReconnectDelayMs?: number;
  /** Most concurrently blocked `read` calls; one more is refused with `redis_unavailable`. Default 10,000. */
  maxBlockedReaders?: number;
  /** Longest single `XREAD BLOCK` of the multiplexer (see above). Default 2,000 ms. */
  blockSliceMs?: number;
  /** Client name prefix in `CLIENT LIST` ("<name>:cmd", "<name>:blk"). Default "capstan". */
  connectionName?: string;
}

/**
 * Token bucket, atomically: the Lua mirror of `takeTokens` in ./internal.ts
 * (keep the two in step). Time comes from the Redis server, so processes with
 * skewed clocks still share one bucket consistently. A full bucket is deleted
 * rather than stored; otherwise the key expires when it would be full again.
 * Returns {allowed 0|1, remaining, resetMs, retryAfterMs}, all integers.
 */
const TAKE_TOKENS_LUA = `
local points = tonumber(ARGV[1])
local duration = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local eps = 1e-6
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = points
local prevTokens = tonumber(st[1])
local prevTs = tonumber(st[2])
if prevTokens ~= nil and prevTs ~= nil then
  local elapsed = now - prevTs
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(points, prevTokens + (elapsed * points) / duration)
end
local allowed = 0
if cost <= tokens + eps then
  tokens = math.max(0, tokens - cost)
  allowed = 1
end
local resetMs = math.max(0, math.ceil(((points - tokens) * duration) / points - eps))
local retryAfterMs = 0
if allowed == 0 then
  retryAfterMs = math.max(1, math.ceil(((cost - tokens) * duration) / points - eps))
end
if resetMs > 0 then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[1], resetMs)
else
  redis.call('DEL', KEYS[1])
end
return {allowed, math.max(0, math.floor(tokens + eps)), resetMs, retryAfterMs}
`;
const TAKE_TOKENS_SHA = createHash("sha1").update(TAKE_TOKENS_LUA).digest("hex");

/** Reply errors that mean "Redis cannot serve right now" rather than "this command is wrong". */
const TRANSIENT_REPLY = /^(LOADING|BUSY|MISCONF|OOM|READONLY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|NOSCRIPT)\b/;
/** XADD's refusal of an id not above the stream's top: the stale-event drop, not an error. */
const STALE_XADD = /equal or smaller than the target stream top item/i;

function mapError(op: string, err: unknown): CapstanError {
  if (err instanceof CapstanError) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  if (e.name === "ReplyError" && !TRANSIENT_REPLY.test(e.message)) {
    return new CapstanError("internal", `redis ${op} refused: ${e.message}`, { cause: e });
  }
  return new CapstanError("redis_unavailable", `redis ${op} failed: ${e.message}`, { cause: e });
}

function isArr(x: unknown): x is unknown[] {
  return Array.isArray(x);
}

function malformed(what: string): CapstanError {
  return new CapstanError("internal", `malformed redis reply: ${what}`);
}

interface RawEntry {
  id: EventIdParts;
  fields: string[];
}

/** XREAD reply → entries per key (absent keys had nothing). Validates the shape instead of trusting it. */
function parseXread(reply: unknown): Map<string, RawEntry[]> {
  const out = new Map<string, RawEntry[]>();
  if (reply === null) return out;
  if (!isArr(reply)) throw malformed("XREAD");
  for (const item of reply) {
    if (!isArr(item)) throw malformed("XREAD stream");
    const [key, entries] = item;
    if (typeof key !== "string" || !isArr(entries)) throw malformed("XREAD stream");
    out.set(
      key,
      entries.map((entry) => {
        if (!isArr(entry)) throw malformed("XREAD entry");
        const [id, fields] = entry;
        if (typeof id !== "string" || !isArr(fields) || !fields.every((f) => typeof f === "string")) {
          throw malformed("XREAD entry");
        }
        return { id: parseStreamId(id), fields };
      }),
    );
  }
  return out;
}

function streamId(p: EventIdParts): string {
  return `${p.n}-${p.k}`;
}

/** A promise that rejects with `redis_unavailable` after `ms`; the loser of the race is still handled. */
async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
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

/**
 * One ioredis connection plus a bounded "wait until ready". ioredis's offline
 * queue is off (it would hold commands for an unbounded time during an outage).
 * Instead: connected → send; a connection attempt in progress → wait for it, at
 * most `timeoutMs`; known to be down (between attempts) → fail at once. So
 * while Redis is down callers get `redis_unavailable` in about a millisecond,
 * and a fresh or restarting connection is still given a moment to come up.
 */
class Connection {
  readonly client: Redis;
  private readonly waiting = new Set<{ resolve(): void; reject(err: Error): void }>();
  private down = false;
  private ended = false;

  constructor(
    readonly role: string,
    url: string,
    options: RedisOptions,
    private readonly log: Logger,
  ) {
    this.client = new Redis(url, options);
    this.client.on("ready", () => {
      if (this.down) this.log.info({ role }, "redis connection restored");
      this.down = false;
      for (const w of [...this.waiting]) w.resolve();
    });
    // ioredis emits an error per failed attempt; log one warning per outage, not one per retry.
    this.client.on("error", (err: Error) => {
      if (this.down || this.ended) return;
      this.down = true;
      this.log.warn({ role, err: err.message }, "redis connection error; reconnecting");
    });
    // The attempt being waited for failed (or the connection dropped): release waiters now.
    this.client.on("close", () => this.failWaiters("redis connection lost"));
    this.client.on("end", () => this.failWaiters("redis connection closed"));
  }

  private failWaiters(why: string): void {
    if (this.waiting.size === 0) return;
    const err = new CapstanError("redis_unavailable", why);
    for (const w of [...this.waiting]) w.reject(err);
  }

  async ready(timeoutMs: number): Promise<void> {
    const status = this.client.status;
    if (status === "ready") return;
    if (this.ended || status === "end")
      throw new CapstanError("redis_unavailable", "redis coordination is closed");
    if (status === "reconnecting" || status === "close") {
      throw new CapstanError("redis_unavailable", "redis is unreachable (reconnecting)");
    }
    await new Promise<void>((resolve, reject) => {
      const w = {
        resolve: () => {
          this.waiting.delete(w);
          clearTimeout(timer);
          resolve();
        },
        reject: (err: Error) => {
          this.waiting.delete(w);
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
      this.waiting.add(w);
    });
  }

  /**
   * Idempotent. `graceful`: QUIT when connected (bounded), so replies in flight
   * still arrive; otherwise (and for the blocking connection, whose QUIT would
   * queue behind a blocked XREAD) drop the socket at once.
   */
  async close(graceful: boolean): Promise<void> {
    if (this.ended) return;
    this.ended = true;
    if (graceful && this.client.status === "ready") {
      try {
        await withTimeout(this.client.quit(), 500, "QUIT");
        return;
      } catch {
        // fall through to a hard disconnect
      }
    }
    this.client.disconnect();
  }
}

interface Waiter {
  key: string;
  after: EventIdParts;
  count: number;
  deadline: number;
  resolve(entries: RawEntry[]): void;
  reject(err: Error): void;
}

/**
 * Multiplexes all blocked readers of this process onto the one `blk`
 * connection. Invariants: at most one XREAD in flight; every waiter is settled
 * exactly once (entries, [] on timeout/abort/close, or an error when the
 * XREAD it was part of failed); the loop runs only while there are waiters.
 */
class BlockingReader {
  private readonly byKey = new Map<string, Set<Waiter>>();
  private size = 0;
  private looping = false;
  private closed = false;
  private seq = 0;
  /** The in-flight XREAD: cursor per key and its sequence number. */
  private inflight: { seq: number; cursors: Map<string, EventIdParts> } | undefined;
  private interruptingSeq = -1;
  /** CLIENT ID of `blk`'s current socket (changes on reconnect). */
  private clientId: number | undefined;
  private unblockUnavailable = false;

  constructor(
    private readonly blk: Connection,
    private readonly cmd: Connection,
    private readonly opts: { readyTimeoutMs: number; blockSliceMs: number; maxBlocked: number },
    private readonly log: Logger,
  ) {
    blk.client.on("close", () => {
      this.clientId = undefined;
    });
  }

  wait(
    key: string,
    after: EventIdParts,
    count: number,
    blockMs: number,
    signal?: AbortSignal,
  ): Promise<RawEntry[]> {
    if (this.closed) return Promise.resolve([]);
    if (this.size >= this.opts.maxBlocked) {
      return Promise.reject(
        new CapstanError(
          "redis_unavailable",
          `too many blocked stream readers (limit ${this.opts.maxBlocked})`,
        ),
      );
    }
    return new Promise<RawEntry[]>((resolve, reject) => {
      let set = this.byKey.get(key);
      if (!set) {
        set = new Set();
        this.byKey.set(key, set);
      }
      const mine = set;
      const settle = (): boolean => {
        if (!mine.delete(w)) return false;
        if (mine.size === 0 && this.byKey.get(key) === mine) this.byKey.delete(key);
        this.size--;
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        return true;
      };
      const w: Waiter = {
        key,
        after,
        count,
        deadline: Date.now() + blockMs,
        resolve: (entries) => {
          if (settle()) resolve(entries);
        },
        reject: (err) => {
          if (settle()) reject(err);
        },
      };
      const onAbort = (): void => w.resolve([]);
      const timer = setTimeout(() => w.resolve([]), blockMs);
      mine.add(w);
      this.size++;
      signal?.addEventListener("abort", onAbort, { once: true });
      this.kick(w);
    });
  }

  /** Settle every waiter with []. Idempotent. */
  close(): void {
    this.closed = true;
    for (const w of this.all()) w.resolve([]);
  }

  private kick(w: Waiter): void {
    if (!this.looping) {
      this.looping = true;
      void this.loop();
      return;
    }
    const inf = this.inflight;
    if (!inf) return; // between calls: the next plan includes w
    const cursor = inf.cursors.get(w.key);
    if (cursor === undefined || compareEventIdParts(cursor, w.after) > 0) this.interrupt(inf.seq, 0);
  }

  /**
   * Cut the in-flight XREAD short so the next one includes new waiters.
   * UNBLOCK can reach Redis before the XREAD it targets has blocked (they use
   * different sockets); then it reports 0 and is retried briefly.
   */
  private interrupt(seq: number, attempt: number): void {
    const id = this.clientId;
    if (id === undefined || this.unblockUnavailable || this.closed) return;
    if (attempt === 0) {
      if (this.interruptingSeq === seq) return;
      this.interruptingSeq = seq;
    }
    this.cmd.client.call("CLIENT", ["UNBLOCK", id, "TIMEOUT"]).then(
      (n) => {
        if (Number(n) === 0 && this.inflight?.seq === seq && attempt < 50) {
          setTimeout(() => this.interrupt(seq, attempt + 1), 10).unref();
        }
      },
      (err: unknown) => {
        if (err instanceof Error && err.name === "ReplyError") {
          // e.g. NOPERM under ACLs: fall back to slice-bounded latency, say so once.
          this.unblockUnavailable = true;
          this.log.warn(
            { err: err.message },
            "CLIENT UNBLOCK unavailable; new stream readers wait for the block slice",
          );
        }
        // connection errors: the in-flight XREAD fails too and the loop re-plans.
      },
    );
  }

  private all(): Waiter[] {
    return [...this.byKey.values()].flatMap((set) => [...set]);
  }

  private plan(): {
    waiters: Waiter[];
    keys: string[];
    ids: string[];
    cursors: Map<string, EventIdParts>;
    count: number;
    blockMs: number;
  } {
    const waiters: Waiter[] = [];
    const keys: string[] = [];
    const ids: string[] = [];
    const cursors = new Map<string, EventIdParts>();
    let count = 1;
    let latest = 0;
    for (const [key, set] of this.byKey) {
      let min: EventIdParts | undefined;
      for (const w of set) {
        waiters.push(w);
        if (min === undefined || compareEventIdParts(w.after, min) < 0) min = w.after;
        count = Math.max(count, w.count);
        latest = Math.max(latest, w.deadline);
      }
      if (min === undefined) continue;
      keys.push(key);
      ids.push(streamId(min));
      cursors.set(key, min);
    }
    // BLOCK 0 would mean "forever": always at least 1 ms.
    const blockMs = Math.max(1, Math.min(this.opts.blockSliceMs, latest - Date.now()));
    return { waiters, keys, ids, cursors, count: Math.min(count, MAX_READ_COUNT), blockMs };
  }

  private async loop(): Promise<void> {
    try {
      while (!this.closed && this.size > 0) {
        let plan: ReturnType<BlockingReader["plan"]> | undefined;
        let reply: unknown;
        try {
          await this.blk.ready(this.opts.readyTimeoutMs);
          if (this.clientId === undefined)
            this.clientId = Number(await this.blk.client.call("CLIENT", ["ID"]));
          if (this.closed || this.size === 0) break;
          // Planned after the awaits above and sent synchronously with `inflight` set, so a
          // waiter arriving at any point is either in this call or triggers an interrupt.
          plan = this.plan();
          this.inflight = { seq: ++this.seq, cursors: plan.cursors };
          reply = await this.blk.client.call("XREAD", [
            "COUNT",
            plan.count,
            "BLOCK",
            plan.blockMs,
            "STREAMS",
            ...plan.keys,
            ...plan.ids,
          ]);
        } catch (err) {
          this.inflight = undefined;
          if (this.closed) break;
          // Fail the waiters that were part of this call (or all, if it was never sent);
          // later ones get their own try.
          const e = mapError("blocking XREAD", err);
          for (const w of plan?.waiters ?? this.all()) w.reject(e);
          continue;
        }
        this.inflight = undefined;
        let byKey: Map<string, RawEntry[]>;
        try {
          byKey = parseXread(reply);
        } catch (err) {
          for (const w of plan.waiters) w.reject(mapError("blocking XREAD", err));
          continue;
        }
        for (const [key, entries] of byKey) {
          const set = this.byKey.get(key);
          if (!set) continue;
          for (const w of [...set]) {
            const mine = entries.filter((e) => compareEventIdParts(e.id, w.after) > 0).slice(0, w.count);
            if (mine.length > 0) w.resolve(mine);
          }
        }
      }
    } catch (err) {
      // Unreachable by construction; never leave waiters hanging if it happens.
      this.log.error({ err }, "blocking reader loop failed");
      const e = mapError("blocking XREAD", err);
      for (const w of this.all()) w.reject(e);
    } finally {
      this.looping = false;
      this.inflight = undefined;
    }
  }
}

export function createRedisCoordination(opts: RedisCoordinationOptions): Coordination {
  const evOpts = checkEventStreamOptions(opts.events);
  const prefix = opts.keyPrefix;
  const log = opts.logger.child({ component: "coord.redis" });
  const connectTimeoutMs = opts.connectTimeoutMs ?? 2_000;
  const commandTimeoutMs = opts.commandTimeoutMs ?? 2_000;
  const readyTimeoutMs = opts.readyTimeoutMs ?? 1_000;
  const pingTimeoutMs = opts.pingTimeoutMs ?? 1_000;
  const maxReconnectDelayMs = opts.maxReconnectDelayMs ?? 2_000;
  const blockSliceMs = opts.blockSliceMs ?? 2_000;
  const name = opts.connectionName ?? "capstan";

  const common: RedisOptions = {
    // Fail fast instead of queueing: see Connection.
    enableOfflineQueue: false,
    // A command in flight when the socket drops fails at once rather than being resent later.
    maxRetriesPerRequest: 0,
    autoResendUnfulfilledCommands: false,
    connectTimeout: connectTimeoutMs,
    // Reconnect forever: 100, 200, 400 … ms, capped.
    retryStrategy: (times: number) => Math.min(50 * 2 ** Math.min(times, 10), maxReconnectDelayMs),
    lazyConnect: false,
  };
  const cmd = new Connection(
    "cmd",
    opts.url,
    {
      ...common,
      connectionName: `${name}:cmd`,
      commandTimeout: commandTimeoutMs,
      // A socket that stops answering (partition, paused server) is torn down and reconnected.
      socketTimeout: commandTimeoutMs + 3_000,
    },
    log,
  );
  const blk = new Connection(
    "blk",
    opts.url,
    {
      ...common,
      connectionName: `${name}:blk`,
      // No commandTimeout: XREAD BLOCK is meant to wait. A dead socket is caught here instead.
      socketTimeout: blockSliceMs + commandTimeoutMs + 1_000,
    },
    log,
  );
  const blocking = new BlockingReader(
    blk,
    cmd,
    { readyTimeoutMs, blockSliceMs, maxBlocked: opts.maxBlockedReaders ?? 10_000 },
    log,
  );
  let closed = false;

  /** Run one command on `cmd`: bounded wait for the connection, errors mapped to CapstanError. */
  async function exec<T>(op: string, fn: (r: Redis) => Promise<T>): Promise<T> {
    if (closed) throw new CapstanError("redis_unavailable", "redis coordination is closed");
    await cmd.ready(readyTimeoutMs);
    try {
      return await fn(cmd.client);
    } catch (err) {
      throw mapError(op, err);
    }
  }

  const evKey = (runId: string): string => `${prefix}ev:${runId}`;

  function toEvent(e: RawEntry): StreamEvent {
    let type: string | undefined;
    let json: string | undefined;
    for (let i = 0; i + 1 < e.fields.length; i += 2) {
      if (e.fields[i] === "type") type = e.fields[i + 1];
      else if (e.fields[i] === "data") json = e.fields[i + 1];
    }
    let data: unknown;
    try {
      data = json === undefined ? undefined : JSON.parse(json);
    } catch {
      data = undefined;
    }
    const id = formatEventId(e.id);
    if (type === undefined || typeof data !== "object" || data === null || Array.isArray(data)) {
      // Not written by us. Still delivered (with its id) so a reader's cursor moves past it
      // instead of re-reading it forever.
      log.warn({ id, type }, "malformed stream entry");
      return { id, type: type ?? "unknown", data: {} };
    }
    return { id, type, data: data as Record<string, unknown> };
  }

  const events: EventStream = {
    async publish(runId, batch) {
      const prepared = prepareEvents(batch);
      if (prepared.length === 0) return 0;
      const key = evKey(runId);
      // MULTI, not a plain pipeline: the stream never exists without its TTL.
      const results = await exec("publish", (r) => {
        const m = r.multi();
        for (const e of prepared) {
          m.call("XADD", [key, "MAXLEN", "~", evOpts.maxLen, streamId(e.id), "type", e.type, "data", e.json]);
        }
        m.pexpire(key, evOpts.ttlMs);
        return m.exec();
      });
      if (!results) throw new CapstanError("redis_unavailable", "redis publish: transaction discarded");
      let appended = 0;
      for (let i = 0; i < prepared.length; i++) {
        const res = results[i];
        if (!res) throw malformed("EXEC");
        const err = res[0];
        if (!err) appended++;
        else if (!STALE_XADD.test(err.message)) throw mapError("publish", err);
        // else: stale or duplicate id (a fenced-out zombie, a re-publish): dropped, not counted.
      }
      return appended;
    },

    async read(runId, afterId, readOpts) {
      const { after, count, blockMs } = checkRead(afterId, readOpts);
      const key = evKey(runId);
      // First a plain read on `cmd`; only an empty answer goes to the blocking multiplexer.
      // No race: the blocking XREAD uses the same explicit cursor, so anything published
      // in between is returned at once.
      const reply = await exec("read", (r) =>
        r.call("XREAD", ["COUNT", count, "STREAMS", key, streamId(after)]),
      );
      const now = parseXread(reply).get(key) ?? [];
      if (now.length > 0 || blockMs === 0 || readOpts.signal?.aborted || closed) return now.map(toEvent);
      const later = await blocking.wait(key, after, count, blockMs, readOpts.signal);
      return later.map(toEvent);
    },

    async exists(runId) {
      return (await exec("exists", (r) => r.exists(evKey(runId)))) === 1;
    },

    /**
     * Wakes blocked readers with [], and later reads no longer wait (non-blocking reads still
     * work). The connections belong to the Coordination and close with it.
     */
    async close() {
      blocking.close();
    },
  };

  function toInt(x: unknown): number {
    const n = typeof x === "number" ? x : typeof x === "string" ? Number(x) : NaN;
    if (!Number.isFinite(n)) throw malformed("rate limit script");
    return n;
  }

  const rateLimiter: RateLimiter = {
    async consume(key, rule, cost = 1): Promise<RateLimitResult> {
      checkRateLimit(rule, cost);
      const k = `${prefix}rl:${key}`;
      const args = [rule.points, rule.durationMs, cost];
      const reply = await exec("rate limit", async (r) => {
        try {
          return await r.evalsha(TAKE_TOKENS_SHA, 1, k, ...args);
        } catch (err) {
          // Scripts vanish on restart (and SCRIPT FLUSH): load it by sending the body once.
          if (err instanceof Error && err.message.startsWith("NOSCRIPT"))
            return await r.eval(TAKE_TOKENS_LUA, 1, k, ...args);
          throw err;
        }
      });
      if (!isArr(reply) || reply.length !== 4) throw malformed("rate limit script");
      const [allowed, remaining, resetMs, retryAfterMs] = reply.map(toInt) as [
        number,
        number,
        number,
        number,
      ];
      return { allowed: allowed === 1, limit: rule.points, remaining, resetMs, retryAfterMs };
    },
    async close() {},
  };

  const kvKey = (key: string): string => `${prefix}kv:${key}`;
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
    events,
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
