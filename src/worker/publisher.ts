import type { EventStream, StreamEvent } from "../coord/types.js";
import type { Logger } from "../logger.js";
import type { RunEvent } from "../state/types.js";

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
  private pending: StreamEvent[] = [];
  private flushing: Promise<void> = Promise.resolve();

  constructor(
    private readonly stream: EventStream,
    private readonly runId: string,
    lastEventId: number,
    private readonly logger: Logger,
  ) {
    this.lastCoarse = lastEventId;
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
    return this.enqueue(events.map((e) => ({ id: String(e.id), type: e.type, data: e.data })));
  }

  /** Publish an ephemeral event (token delta, reset) under the last coarse id. */
  ephemeral(type: string, data: Record<string, unknown>): Promise<void> {
    this.k++;
    return this.enqueue([{ id: `${this.lastCoarse}.${this.k}`, type, data }]);
  }

  /** Wait until everything handed over so far was sent (or failed). */
  drain(): Promise<void> {
    return this.flushing;
  }

  // Publishes are chained so they reach the stream in id order; events that
  // pile up while one is in flight go out together in the next call.
  private enqueue(events: StreamEvent[]): Promise<void> {
    this.pending.push(...events);
    this.flushing = this.flushing.then(async () => {
      if (this.pending.length === 0) return;
      const batch = this.pending;
      this.pending = [];
      try {
        await this.stream.publish(this.runId, batch);
      } catch (err) {
        this.logger.warn(
          { err, runId: this.runId },
          "event stream publish failed; readers will use Postgres",
        );
      }
    });
    return this.flushing;
  }
}
