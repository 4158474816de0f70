import type { EventStream, StreamEvent } from "../coord/types.js";
import type { Logger, ThrottledLog } from "../logger.js";
import type { RunEvent } from "../state/types.js";

/**
 * Largest `message.delta` event: its `data` as JSON, in UTF-8 bytes. Longer
 * streamed text goes out as several deltas, so no reader (and no Redis entry)
 * ever holds one event larger than this, whatever the model writes.
 */
export const MAX_DELTA_EVENT_BYTES = 16 * 1024;

/**
 * Most bytes of deltas waiting to be published for one run (they pile up
 * while the stream is slow or down). Past it, new deltas are dropped: they are
 * ephemeral, and the step's `message.completed` carries the whole text.
 */
export const MAX_PENDING_DELTA_BYTES = 1024 * 1024;

/** The message of a failed publish (for a worker's shared throttle, src/logger.ts `throttledLog`). */
export const PUBLISH_FAILED = "event stream publish failed; readers will use Postgres";

export interface RunPublisherOptions {
  /** How long streamed text is batched into one delta (unless it reaches the size bound first). */
  deltaFlushMs: number;
  /**
   * Where publish failures are reported: shared by every run of a worker, so
   * an outage writes a few lines with counts, not one per failed publish.
   */
  publishFailures?: ThrottledLog;
}

/**
 * Publishes one run's events to the live stream. Coarse events were already
 * persisted (with their ids) by the transaction that produced them; deltas
 * are ephemeral and numbered `N.k` under the last coarse id N. Publishing is
 * best effort: the stream may be flushed at any time and readers fill gaps
 * from Postgres, so a Redis failure never fails a run.
 */
export class RunPublisher {
  private lastCoarse: number;
  private k = 0;
  private pending: Array<StreamEvent & { bytes: number }> = [];
  private pendingDeltaBytes = 0;
  private flushing: Promise<void> = Promise.resolve();
  private text = { stepNo: -1, buffer: "" };
  private textTimer: NodeJS.Timeout | undefined;
  private droppedDeltas = false;

  constructor(
    private readonly stream: EventStream,
    private readonly runId: string,
    lastEventId: number,
    private readonly logger: Logger,
    private readonly opts: RunPublisherOptions = { deltaFlushMs: 25 },
  ) {
    this.lastCoarse = lastEventId;
  }

  /** The highest persisted event id handed to this publisher (or the run's at claim). */
  get lastCoarseId(): number {
    return this.lastCoarse;
  }

  /** Publish persisted events (in id order). */
  coarse(events: RunEvent[]): Promise<void> {
    if (events.length === 0) return Promise.resolve();
    for (const e of events) {
      if (e.id > this.lastCoarse) {
        this.lastCoarse = e.id;
        this.k = 0;
      }
    }
    return this.enqueue(events.map((e) => ({ id: String(e.id), type: e.type, data: e.data, bytes: 0 })));
  }

  /** Publish an ephemeral event (a reset, a notice) under the last coarse id. */
  ephemeral(type: string, data: Record<string, unknown>): Promise<void> {
    this.k++;
    return this.enqueue([{ id: `${this.lastCoarse}.${this.k}`, type, data, bytes: 0 }]);
  }

  /**
   * Streamed model text of a step: batched for `deltaFlushMs`, then published
   * as `message.delta` events of at most MAX_DELTA_EVENT_BYTES each.
   */
  delta(stepNo: number, text: string): void {
    if (this.text.stepNo !== stepNo) this.flushText();
    this.text.stepNo = stepNo;
    this.text.buffer += text;
    // Big enough for a full event: no point holding it (and the buffer stays bounded).
    if (this.text.buffer.length >= MAX_DELTA_EVENT_BYTES) this.flushText();
    else this.textTimer ??= setTimeout(() => this.flushText(), this.opts.deltaFlushMs);
  }

  /** Publish the batched text now (before a reset, a journal write, the end of a step). */
  flushText(): void {
    if (this.textTimer) clearTimeout(this.textTimer);
    this.textTimer = undefined;
    const { stepNo, buffer } = this.text;
    this.text.buffer = "";
    if (!buffer) return;
    const events: Array<StreamEvent & { bytes: number }> = [];
    for (const piece of splitForDeltas(this.runId, stepNo, buffer)) {
      if (this.pendingDeltaBytes + piece.bytes > MAX_PENDING_DELTA_BYTES) {
        if (!this.droppedDeltas)
          this.logger.warn(
            "event stream backlog full; dropping this run's deltas (message.completed has the text)",
          );
        this.droppedDeltas = true;
        break;
      }
      this.k++;
      this.pendingDeltaBytes += piece.bytes;
      events.push({
        id: `${this.lastCoarse}.${this.k}`,
        type: "message.delta",
        data: piece.data,
        bytes: piece.bytes,
      });
    }
    if (events.length) void this.enqueue(events);
  }

  /** Forget the batched text (its step failed). */
  dropText(): void {
    if (this.textTimer) clearTimeout(this.textTimer);
    this.textTimer = undefined;
    this.text.buffer = "";
  }

  /** Wait until everything handed over so far was sent (or failed). */
  drain(): Promise<void> {
    return this.flushing;
  }

  // Publishes are chained so they reach the stream in id order; events that
  // pile up while one is in flight go out together in the next call.
  private enqueue(events: Array<StreamEvent & { bytes: number }>): Promise<void> {
    this.pending.push(...events);
    this.flushing = this.flushing.then(async () => {
      if (this.pending.length === 0) return;
      const batch = this.pending;
      this.pending = [];
      for (const e of batch) this.pendingDeltaBytes -= e.bytes;
      try {
        await this.stream.publish(
          this.runId,
          batch.map(({ id, type, data }) => ({ id, type, data })),
        );
      } catch (err) {
        // The logger's bindings carry runId already; the shared throttle's do not.
        if (this.opts.publishFailures) this.opts.publishFailures.log({ err, runId: this.runId });
        else this.logger.warn({ err }, PUBLISH_FAILED);
      }
    });
    return this.flushing;
  }
}

/**
 * Splits text into `message.delta` data objects whose JSON is at most
 * MAX_DELTA_EVENT_BYTES in UTF-8, never inside a code point. Each character
 * is costed as JSON.stringify writes it (escapes for quotes, backslashes,
 * control characters and lone surrogates).
 */
export function splitForDeltas(
  runId: string,
  stepNo: number,
  text: string,
): Array<{ data: Record<string, unknown>; bytes: number }> {
  const envelope = Buffer.byteLength(JSON.stringify({ run_id: runId, step_no: stepNo, text: "" }));
  const room = MAX_DELTA_EVENT_BYTES - envelope;
  const out: Array<{ data: Record<string, unknown>; bytes: number }> = [];
  let start = 0;
  let at = 0;
  let size = 0;
  for (const ch of text) {
    const cost = jsonCost(ch);
    if (size + cost > room && at > start) {
      out.push({
        data: { run_id: runId, step_no: stepNo, text: text.slice(start, at) },
        bytes: envelope + size,
      });
      start = at;
      size = 0;
    }
    size += cost;
    at += ch.length;
  }
  if (at > start)
    out.push({
      data: { run_id: runId, step_no: stepNo, text: text.slice(start, at) },
      bytes: envelope + size,
    });
  return out;
}

function jsonCost(ch: string): number {
  const cp = ch.codePointAt(0)!;
  if (cp === 0x22 || cp === 0x5c) return 2;
  if (cp < 0x20) return cp === 0x08 || cp === 0x09 || cp === 0x0a || cp === 0x0c || cp === 0x0d ? 2 : 6;
  if (cp < 0x80) return 1;
  if (cp < 0x800) return 2;
  if (cp >= 0xd800 && cp <= 0xdfff) return 6; // a lone surrogate: written as \udxxx
  return cp < 0x10000 ? 3 : 4;
}
