/**
 * The run event streams on Redis: one stream per run at `${keyPrefix}ev:${runId}`,
 * entry id = event id ("N.k" → "N-k"), fields `type` and `data` (JSON).
 *
 * - publish: one MULTI per batch (XADDs + PEXPIRE), so a stream never exists
 *   without its TTL. XADD refuses ids not above the stream's top: that is how
 *   stale events of a fenced-out worker (and re-publishes) are dropped, not an error.
 * - Streams are trimmed with `MAXLEN ~ maxLen`: Redis trims whole macro nodes, so a
 *   stream holds between maxLen and about maxLen + 100 entries (stream-node-max-entries).
 * - read: a plain XREAD on `cmd` first; only an empty answer waits, in the
 *   BlockingReader (./blocking-reader.ts).
 */
import { CapstanError } from "../../errors.js";
import type { Logger } from "../../logger.js";
import { formatEventId } from "../event-id.js";
import { checkRead, prepareEvents } from "../internal.js";
import type { EventStream, EventStreamOptions, StreamEvent } from "../types.js";
import type { BlockingReader } from "./blocking-reader.js";
import type { RedisConnection } from "./connection.js";
import { malformed, mapRedisError } from "./errors.js";
import { parseXread, streamId, type RawEntry } from "./xread.js";

/** XADD's refusal of an id not above the stream's top: the stale-event drop, not an error. */
const STALE_XADD = /equal or smaller than the target stream top item/i;

export interface RedisEventStreamDeps {
  exec: RedisConnection["exec"];
  blocking: BlockingReader;
  /** True once the owning Coordination closed: reads no longer wait. */
  isClosed(): boolean;
  keyPrefix: string;
  /** Already validated (`checkEventStreamOptions`). */
  options: EventStreamOptions;
  logger: Logger;
}

export function createRedisEventStream(deps: RedisEventStreamDeps): EventStream {
  const evOpts = deps.options;
  const { exec, blocking, logger: log } = deps;
  const evKey = (runId: string): string => `${deps.keyPrefix}ev:${runId}`;

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

  return {
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
        else if (!STALE_XADD.test(err.message)) throw mapRedisError("publish", err);
        // else: stale or duplicate id (a fenced-out zombie, a re-publish): dropped, not counted.
      }
      return appended;
    },

    async read(runId, afterId, readOpts) {
      const { after, count, blockMs } = checkRead(afterId, readOpts);
      const key = evKey(runId);
      // No race between the two reads: the blocking XREAD uses the same explicit cursor,
      // so anything published in between is returned at once.
      const reply = await exec("read", (r) =>
        r.call("XREAD", ["COUNT", count, "STREAMS", key, streamId(after)]),
      );
      const now = parseXread(reply).get(key) ?? [];
      if (now.length > 0 || blockMs === 0 || readOpts.signal?.aborted || deps.isClosed()) {
        return now.map(toEvent);
      }
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
}
