/**
 * Blocked stream reads, multiplexed: every blocked `events.read` of this
 * process shares ONE connection (`blk`) and at most ONE `XREAD BLOCK` in flight,
 * over every stream that has waiters. So blocked readers cost no connections,
 * are capped (`maxBlocked`), and never delay ordinary commands on `cmd`.
 *
 * Contract:
 * - Every waiter is settled exactly once: with its entries (those after its own
 *   cursor, at most its own count), with [] on timeout, abort or close, or with
 *   the error of the XREAD it was part of (mapped: `redis_unavailable` when the
 *   connection dropped, so a reader does not wait out its `blockMs` on a dead socket).
 * - One XREAD per key uses the smallest cursor of its waiters; each waiter then
 *   takes what is after its own cursor. Waiters with nothing new keep waiting.
 * - A waiter whose key (or an older cursor) the in-flight XREAD lacks
 *   interrupts it with `CLIENT UNBLOCK <id> TIMEOUT` sent on `cmd`, and the loop
 *   re-plans. The UNBLOCK can reach Redis before the XREAD it targets has
 *   blocked (different sockets): a reply of 0 is retried briefly (up to 50 × 10 ms).
 * - Every XREAD blocks at most `blockSliceMs`, which bounds the latency of a new
 *   waiter where UNBLOCK is unavailable (ACLs: NOPERM is logged once, then slices
 *   alone bound it). BLOCK 0 ("forever") is never sent.
 * - The loop runs only while there are waiters; a waiter that arrives while it
 *   is between calls is in the next plan, one that arrives during a call
 *   interrupts it (the plan is made after the last await and sent synchronously).
 * - `CLIENT ID` of `blk` is asked again after every reconnect (the id changes).
 */
import type { Logger } from "../../logger.js";
import { CapstanError } from "../../errors.js";
import { compareEventIdParts, type EventIdParts } from "../event-id.js";
import { MAX_READ_COUNT } from "../internal.js";
import type { RedisConnection } from "./connection.js";
import { mapRedisError } from "./errors.js";
import { parseXread, streamId, type RawEntry } from "./xread.js";

export interface BlockingReaderOptions {
  /** Longest single `XREAD BLOCK`. */
  blockSliceMs: number;
  /** Most concurrent waiters; one more is refused with `redis_unavailable`. */
  maxBlocked: number;
}

interface Waiter {
  key: string;
  after: EventIdParts;
  count: number;
  deadline: number;
  resolve(entries: RawEntry[]): void;
  reject(err: Error): void;
}

export class BlockingReader {
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
    private readonly blk: RedisConnection,
    private readonly cmd: RedisConnection,
    private readonly opts: BlockingReaderOptions,
    private readonly log: Logger,
  ) {
    blk.client.on("close", () => {
      this.clientId = undefined;
    });
  }

  /**
   * Entries of stream `key` after `after` (at most `count`), as soon as there are
   * any; [] after `blockMs`, on abort, or once closed. Rejects with `redis_unavailable`
   * when over `maxBlocked` or when the XREAD it was part of failed.
   */
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
          await this.blk.ready();
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
          const e = mapRedisError("blocking XREAD", err);
          for (const w of plan?.waiters ?? this.all()) w.reject(e);
          continue;
        }
        this.inflight = undefined;
        let byKey: Map<string, RawEntry[]>;
        try {
          byKey = parseXread(reply);
        } catch (err) {
          for (const w of plan.waiters) w.reject(mapRedisError("blocking XREAD", err));
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
      const e = mapRedisError("blocking XREAD", err);
      for (const w of this.all()) w.reject(e);
    } finally {
      this.looping = false;
      this.inflight = undefined;
    }
  }
}
