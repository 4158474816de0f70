/**
 * `GET /v1/runs/:id/events`: the streaming contract (docs/http-api.md#run-events-sse,
 * docs/architecture.md#streaming-channel).
 *
 * Ids: a coarse event persisted in Postgres is "N" (gap-free per run); a
 * token delta is "N.k" (k-th delta after coarse event N, live stream only).
 *
 * Guarantees of one stream:
 * - strictly increasing ids: nothing ≤ the last id sent is ever written
 *   (stale or duplicate entries are dropped);
 * - no gaps in coarse events: before writing an event that needs coarse
 *   events the live stream skipped (a worker crashed before publishing, the
 *   Redis stream was flushed, trimmed or expired), they are read from
 *   Postgres and written first;
 * - persisted events that never reach Redis at all are served from Postgres
 *   once they have been announced (NOTIFY or slow poll) for `gapGraceMs`
 *   without showing up live — at once when Redis is down or the stream is gone;
 * - the stream ends after `run.succeeded`, `run.failed` or `run.cancelled`.
 *   `run.waiting` is not an end: the run resumes on the same stream;
 * - bounded memory, by bytes: unsent data per client stays within
 *   `maxBufferedBytes` plus one slice (large frames go out in slices, each
 *   when the socket has room), nothing is read while a client is blocked, and
 *   read batches shrink to fit that budget after the largest event seen; a
 *   client that does not drain within `stallTimeoutMs` is dropped;
 * - a disconnect aborts the reads (signal) and never touches the run.
 */
import type { FastifyReply } from "fastify";
import type { Writable } from "node:stream";
import {
  compareEventIdParts,
  formatEventId,
  isValidEventId,
  parseEventId,
  type EventIdParts,
} from "../coord/event-id.js";
import type { EventStream, StreamEvent } from "../coord/types.js";
import type { Logger } from "../logger.js";
import type { Db } from "../state/db.js";
import { listEvents } from "../state/events.js";
import { getRunProgress, type RunProgress } from "../state/queries.js";
import { isTerminal } from "../state/types.js";
import { CapstanError } from "../errors.js";
import type { IngressMetrics } from "./metrics.js";
import type { RunWatch } from "./run-watch.js";

export interface SseOptions {
  /** Comment line sent when idle, so proxies keep the connection. Default 15,000 ms. */
  heartbeatMs: number;
  /** Longest single blocking read on the live stream. Default 2,000 ms. */
  blockMs: number;
  /** How long announced persisted events may take to appear live before Postgres serves them. Default 500 ms. */
  gapGraceMs: number;
  /** Slow poll of the run's progress in Postgres (covers lost notifications). Default 5,000 ms. */
  pollMs: number;
  /** Events per read, from either source. Default 100. */
  batch: number;
  /** A client whose socket stays blocked this long is dropped. Default 30,000 ms. */
  stallTimeoutMs: number;
  /**
   * Bytes a client may have unsent before the stream waits for it to drain
   * (reading nothing more meanwhile); also what one read batch aims to stay
   * within. Default 256 KiB.
   */
  maxBufferedBytes: number;
  /** Reconnect delay advertised with `retry:`. Default 2,000 ms. */
  retryMs: number;
  /** After a live-stream error, serve from Postgres this long before trying again. Default 2,000 ms. */
  redisRetryMs: number;
}

export const DEFAULT_SSE: SseOptions = {
  heartbeatMs: 15_000,
  blockMs: 2_000,
  gapGraceMs: 500,
  pollMs: 5_000,
  batch: 100,
  stallTimeoutMs: 30_000,
  maxBufferedBytes: 256 * 1024,
  retryMs: 2_000,
  redisRetryMs: 2_000,
};

const TERMINAL_EVENTS = new Set(["run.succeeded", "run.failed", "run.cancelled"]);

/** The resume cursor: `Last-Event-ID` wins over `?after=`; absent means from the start. */
export function parseCursor(
  lastEventId: string | string[] | undefined,
  after: string | undefined,
): EventIdParts {
  if (lastEventId !== undefined) {
    const v = Array.isArray(lastEventId) ? undefined : lastEventId.trim();
    if (v === undefined || !isValidEventId(v)) {
      throw new CapstanError("validation_failed", 'invalid Last-Event-ID: expected "N" or "N.k"', {
        fields: [{ field: "Last-Event-ID", message: 'expected "N" or "N.k" (non-negative integers)' }],
      });
    }
    return parseEventId(v);
  }
  if (after !== undefined) {
    if (!isValidEventId(after)) {
      throw new CapstanError("validation_failed", 'invalid after: expected "N" or "N.k"', {
        fields: [{ field: "query.after", message: 'expected "N" or "N.k" (non-negative integers)' }],
      });
    }
    return parseEventId(after);
  }
  return { n: 0, k: 0 };
}

class ClientGone extends Error {}

/** Most bytes handed to the socket at once: a larger frame goes out in pieces, each when there is room. */
const SLICE_BYTES = 64 * 1024;

/**
 * Writes SSE frames with backpressure, bounded by bytes: no more is handed to
 * the socket while its unsent bytes are at `maxBufferedBytes` (or the
 * socket's own high-water mark, if larger: below it Node emits no `drain`),
 * so what a client has not received stays within that bound plus one slice,
 * however large a frame is. The caller awaits every write, so nothing more is
 * read from the sources meanwhile. A client that stays blocked for
 * `stallTimeoutMs` is dropped (it resumes with Last-Event-ID).
 */
export class FrameWriter {
  private waiting = false;
  private midFrame = false;
  private readonly bound: number;
  private readonly slice: number;

  constructor(
    private readonly res: Writable,
    private readonly opts: Pick<SseOptions, "maxBufferedBytes" | "stallTimeoutMs">,
    private readonly signal: AbortSignal,
    private readonly onDrop: () => void,
  ) {
    this.bound = Math.max(1, opts.maxBufferedBytes, res.writableHighWaterMark);
    this.slice = Math.max(1, Math.min(SLICE_BYTES, opts.maxBufferedBytes));
  }

  get gone(): boolean {
    return this.res.destroyed || this.res.writableEnded;
  }

  /** Bytes handed to the socket and not yet sent. */
  get unsent(): number {
    return this.res.writableLength;
  }

  /**
   * A frame was cut short (the client left or the server is closing while it
   * waited): the connection must be destroyed, not ended, so the client never
   * sees the blank line that would complete the broken event.
   */
  get partial(): boolean {
    return this.midFrame;
  }

  /** Write one frame; resolves when the socket has room for more. Returns the frame's size in bytes. */
  async write(frame: string): Promise<number> {
    if (this.gone) throw new ClientGone();
    const bytes = Buffer.from(frame, "utf8");
    this.midFrame = true;
    for (let at = 0; at < bytes.length; at += this.slice) {
      if (this.res.writableLength >= this.bound) await this.room();
      this.res.write(bytes.subarray(at, at + this.slice));
    }
    this.midFrame = false;
    if (this.res.writableLength >= this.bound) await this.room();
    return bytes.length;
  }

  /** A heartbeat only when nothing is queued: a blocked client needs no more bytes. */
  heartbeat(): void {
    if (!this.gone && !this.waiting && !this.midFrame && this.res.writableLength === 0)
      this.res.write(": ping\n\n");
  }

  /** Wait for `drain`; drop the client if it does not come within the stall bound. */
  private async room(): Promise<void> {
    if (this.gone) throw new ClientGone();
    this.waiting = true;
    try {
      if (!(await this.drained())) {
        if (!this.gone && !this.signal.aborted) {
          this.onDrop();
          this.res.destroy();
        }
        throw new ClientGone();
      }
    } finally {
      this.waiting = false;
    }
  }

  private drained(): Promise<boolean> {
    return new Promise((resolve) => {
      const finish = (ok: boolean): void => {
        clearTimeout(timer);
        this.res.off("drain", onDrain);
        this.res.off("close", onClose);
        this.signal.removeEventListener("abort", onClose);
        resolve(ok);
      };
      const onDrain = (): void => finish(true);
      const onClose = (): void => finish(false);
      const timer = setTimeout(() => finish(false), this.opts.stallTimeoutMs);
      this.res.on("drain", onDrain);
      this.res.on("close", onClose);
      this.signal.addEventListener("abort", onClose, { once: true });
    });
  }
}

export interface StreamDeps {
  db: Db;
  events: EventStream;
  logger: Logger;
  metrics: IngressMetrics;
  opts: SseOptions;
  /** Ends every stream with a `retry:` hint (server shutting down). */
  shutdown: AbortSignal;
}

export interface StreamStart {
  runId: string;
  after: EventIdParts;
  /** Progress read after `watch` was opened (so no notification is missed in between). */
  progress: RunProgress;
  watch: RunWatch;
  /** Headers already set on the reply (request id, rate limit). */
  headers: Record<string, string>;
}

/**
 * Serve one SSE stream on a hijacked reply until the run ends, the client
 * leaves or the server shuts down. Never throws: failures end the stream
 * (the client resumes with Last-Event-ID).
 */
export async function serveRunEvents(
  deps: StreamDeps,
  reply: FastifyReply,
  start: StreamStart,
): Promise<void> {
  const res = reply.raw;
  const log = deps.logger.child({ runId: start.runId });
  const opts = deps.opts;
  const clientGone = new AbortController();
  const onClose = (): void => clientGone.abort();
  res.on("close", onClose);
  const signal = AbortSignal.any([clientGone.signal, deps.shutdown]);
  const writer = new FrameWriter(res, opts, signal, () =>
    deps.metrics.sseDropped.inc({ reason: "slow_client" }),
  );

  reply.hijack();
  res.writeHead(200, {
    ...start.headers,
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache, no-transform",
    connection: "keep-alive",
    "x-accel-buffering": "no",
  });
  res.flushHeaders();
  const heartbeat = setInterval(() => writer.heartbeat(), opts.heartbeatMs);
  deps.metrics.base.sseClients.inc();
  const untrack = deps.metrics.trackSseBuffer(() => writer.unsent);

  const session = new Session(deps, writer, start, signal, log);
  try {
    await writer.write(`retry: ${opts.retryMs}\n\n`);
    await session.run();
  } catch (err) {
    if (!(err instanceof ClientGone)) {
      log.warn({ err }, "event stream failed; ending it (the client resumes with Last-Event-ID)");
      deps.metrics.sseDropped.inc({ reason: "error" });
    }
  } finally {
    clearInterval(heartbeat);
    deps.metrics.base.sseClients.dec();
    untrack();
    res.off("close", onClose);
    if (writer.partial && !writer.gone) {
      // Never complete a frame cut short: the client discards the unfinished event and resumes.
      res.destroy();
    } else if (!writer.gone) {
      // Shutting down: tell the client to come back soon (to another replica).
      if (deps.shutdown.aborted)
        res.write(`: server shutting down\nretry: ${Math.min(opts.retryMs, 1_000)}\n\n`);
      res.end();
      // A client that does not read what is still buffered keeps the socket
      // (and a graceful close) waiting: bounded like any stalled write.
      if (!res.writableFinished) {
        const cut = setTimeout(
          () => {
            if (!res.writableFinished) res.destroy();
          },
          deps.shutdown.aborted ? Math.min(opts.stallTimeoutMs, 1_000) : opts.stallTimeoutMs,
        );
        cut.unref();
        res.once("close", () => clearTimeout(cut));
      }
    }
  }
}

class Session {
  /** The last id written (or the client's cursor). */
  private last: EventIdParts;
  /** Highest persisted event id known to exist (from the run row, NOTIFY or polls). */
  private known: number;
  /** Since when `known` has been ahead of what was sent (undefined: not ahead). */
  private aheadSince: number | undefined;
  private liveDownUntil = 0;
  private lastPoll = Date.now();
  private status: RunProgress["status"];
  private ended = false;
  private lastLiveWarn = 0;
  /** Events per read: starts at one and grows while batches fit `maxBufferedBytes` (see `fit`). */
  private count = 1;
  /** Bytes of the largest frame written so far. */
  private largest = 0;

  constructor(
    private readonly deps: StreamDeps,
    private readonly writer: FrameWriter,
    private readonly start: StreamStart,
    private readonly signal: AbortSignal,
    private readonly log: Logger,
  ) {
    this.last = start.after;
    this.known = start.progress.lastEventId;
    this.status = start.progress.status;
  }

  async run(): Promise<void> {
    const { opts } = this.deps;
    // A stream that is gone (flushed, expired, never written) cannot fill
    // anything: serve what Postgres has at once rather than after the grace.
    if (this.known > this.last.n && !(await this.liveExists())) this.aheadSince = -Infinity;

    while (!this.ended && !this.signal.aborted) {
      if (this.start.watch.takeResync()) await this.poll();
      const now = Date.now();
      this.noteKnown(this.start.watch.latest, now);
      const liveUp = now >= this.liveDownUntil;

      if (this.aheadSince !== undefined && (!liveUp || now - this.aheadSince >= opts.gapGraceMs)) {
        await this.fillFromPostgres(Infinity);
        continue;
      }
      // Finished, and everything it persisted was sent (the terminal event ends the loop itself;
      // this covers a cursor already past it).
      if (isTerminal(this.status) && this.last.n >= this.known) return;

      const untilPoll = Math.max(0, this.lastPoll + opts.pollMs - now);
      if (liveUp) {
        const blockMs =
          this.aheadSince !== undefined
            ? Math.max(0, this.aheadSince + opts.gapGraceMs - now)
            : Math.min(opts.blockMs, untilPoll);
        const got = await this.readLive(blockMs);
        for (const e of got) {
          await this.onLive(e.id, e.type, e.data);
          if (this.ended || this.signal.aborted) return;
        }
        if (got.length > 0) continue;
      } else {
        // Live stream down: Postgres only. Wake on NOTIFY, the slow poll, or the next live retry.
        await this.start.watch.next(Math.min(untilPoll, Math.max(0, this.liveDownUntil - now)), this.signal);
      }
      if (Date.now() - this.lastPoll >= opts.pollMs) await this.poll();
    }
  }

  private noteKnown(id: number, now = Date.now()): void {
    if (id > this.known) this.known = id;
    if (this.known > this.last.n) this.aheadSince ??= now;
    else this.aheadSince = undefined;
  }

  private async poll(): Promise<void> {
    this.lastPoll = Date.now();
    const p = await getRunProgress(this.deps.db, this.start.runId);
    if (!p) {
      // The run was pruned while streaming: nothing more will come.
      this.ended = true;
      return;
    }
    this.status = p.status;
    this.noteKnown(p.lastEventId);
  }

  private async liveExists(): Promise<boolean> {
    try {
      return await this.deps.events.exists(this.start.runId);
    } catch (err) {
      this.liveFailed(err);
      return false;
    }
  }

  private liveFailed(err: unknown): void {
    this.liveDownUntil = Date.now() + this.deps.opts.redisRetryMs;
    const now = Date.now();
    if (now - this.lastLiveWarn > 10_000) {
      this.lastLiveWarn = now;
      this.log.warn({ err }, "live event stream unavailable; serving from Postgres");
    }
  }

  private async readLive(blockMs: number): Promise<StreamEvent[]> {
    try {
      return await this.deps.events.read(this.start.runId, formatEventId(this.last), {
        count: this.count,
        blockMs,
        signal: this.signal,
      });
    } catch (err) {
      if (this.signal.aborted) return [];
      this.liveFailed(err);
      return [];
    }
  }

  /** One live entry: drop if stale, fill skipped coarse events from Postgres, then write. */
  private async onLive(id: string, type: string, data: Record<string, unknown>): Promise<void> {
    if (!isValidEventId(id)) return;
    const p = parseEventId(id);
    if (compareEventIdParts(p, this.last) <= 0) return;
    // Coarse N needs N-1 before it; delta N.k needs N itself.
    const needed = p.k === 0 ? p.n - 1 : p.n;
    if (this.last.n < needed) {
      await this.fillFromPostgres(needed);
      if (this.ended || this.signal.aborted) return;
      if (this.last.n < needed) {
        this.log.warn(
          { missingAfter: this.last.n, needed },
          "persisted events missing in Postgres; continuing",
        );
      }
      if (compareEventIdParts(p, this.last) <= 0) return;
    }
    this.noteKnown(p.n);
    await this.emit(p, type, data);
  }

  /** Write persisted events after the last sent, up to `upTo` (or one batch when unbounded). */
  private async fillFromPostgres(upTo: number): Promise<void> {
    for (;;) {
      const want = upTo === Infinity ? this.count : Math.min(this.count, upTo - this.last.n);
      if (want <= 0) return;
      const rows = await listEvents(this.deps.db, this.start.runId, this.last.n, want);
      for (const e of rows) {
        if (e.id <= this.last.n) continue;
        this.noteKnown(e.id);
        await this.emit({ n: e.id, k: 0 }, e.type, e.data);
        if (this.ended || this.signal.aborted) return;
      }
      if (rows.length === 0) {
        // Announced but not there (the run was pruned): stop chasing the hint;
        // the slow poll re-reads the run (and ends the stream if it is gone).
        this.known = this.last.n;
        this.aheadSince = undefined;
        return;
      }
      if (upTo === Infinity || this.last.n >= upTo) return;
    }
  }

  /**
   * Size the next reads after the largest event seen: a batch of such events
   * fits the byte budget (one event, if one alone is larger), growing at most
   * twofold per event so a stream of unknown sizes starts small.
   */
  private fit(bytes: number): void {
    const { batch, maxBufferedBytes } = this.deps.opts;
    this.largest = Math.max(this.largest, bytes);
    const fits = Math.max(1, Math.floor(maxBufferedBytes / this.largest));
    this.count = Math.min(batch, fits, this.count * 2);
  }

  private async emit(id: EventIdParts, type: string, data: Record<string, unknown>): Promise<void> {
    const safeType = type.replace(/[\r\n]/g, " ");
    const sid = formatEventId(id);
    const bytes = await this.writer.write(
      `id: ${sid}\nevent: ${safeType}\ndata: ${JSON.stringify(data)}\n\n`,
    );
    this.fit(bytes);
    this.last = id;
    if (id.k === 0 && TERMINAL_EVENTS.has(type)) this.ended = true;
  }
}
