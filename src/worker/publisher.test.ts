import { describe, expect, it } from "vitest";
import { createMemoryCoordination } from "../coord/memory.js";
import type { EventStream, StreamEvent } from "../coord/types.js";
import { silentLogger } from "../logger.js";
import { MAX_DELTA_EVENT_BYTES, MAX_PENDING_DELTA_BYTES, RunPublisher, splitForDeltas } from "./publisher.js";

const RUN = "00000000-0000-4000-8000-000000000001";
const jsonBytes = (data: unknown) => Buffer.byteLength(JSON.stringify(data));

describe("splitForDeltas", () => {
  // Each alphabet stresses one cost of JSON.stringify: ASCII, 2/3/4-byte UTF-8, escapes.
  const alphabets: Record<string, string> = {
    ascii: "abc xyz ",
    twoByte: "é ß ",
    threeByte: "€ 日本 ",
    fourByte: "😀🚀",
    escapes: '"\\\n\t\u0001',
    loneSurrogates: "a\udfffb\ud800",
  };
  for (const [name, alphabet] of Object.entries(alphabets)) {
    it(`keeps every event within the bound and loses nothing (${name})`, () => {
      const chars = [...alphabet];
      let text = "";
      // Deterministic mix, long enough for many events.
      for (let i = 0; text.length < 100_000; i++) text += chars[(i * 7) % chars.length];
      const pieces = splitForDeltas(RUN, 3, text);
      expect(pieces.length).toBeGreaterThan(1);
      for (const p of pieces) {
        const bytes = jsonBytes(p.data);
        expect(bytes).toBeLessThanOrEqual(MAX_DELTA_EVENT_BYTES);
        expect(p.bytes).toBe(bytes);
        expect(p.data).toMatchObject({ run_id: RUN, step_no: 3 });
      }
      expect(pieces.map((p) => p.data.text).join("")).toBe(text);
      // Splits fall between code points: a pair is never cut into two lone halves.
      const lone = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
      if (name !== "loneSurrogates")
        for (const p of pieces) expect(lone.test(String(p.data.text))).toBe(false);
    });
  }

  it("packs pieces close to the bound (a split only when the next character does not fit)", () => {
    const pieces = splitForDeltas(RUN, 0, "x".repeat(3 * MAX_DELTA_EVENT_BYTES));
    const sizes = pieces.map((p) => p.bytes);
    for (const s of sizes.slice(0, -1)) expect(s).toBe(MAX_DELTA_EVENT_BYTES);
  });

  it("short text is one piece", () => {
    expect(splitForDeltas(RUN, 0, "hello").map((p) => p.data.text)).toEqual(["hello"]);
  });
});

function memoryStream(): EventStream {
  return createMemoryCoordination({ events: { maxLen: 100_000, ttlMs: 60_000 } }).events;
}

async function readAll(stream: EventStream): Promise<StreamEvent[]> {
  const out: StreamEvent[] = [];
  for (let after = "0"; ;) {
    const batch = await stream.read(RUN, after, { count: 1_000 });
    if (batch.length === 0) return out;
    out.push(...batch);
    after = batch[batch.length - 1]!.id;
  }
}

describe("RunPublisher deltas", () => {
  it("a 4.3 MB output streamed in small chunks goes out as bounded deltas, in order, whole", async () => {
    const stream = memoryStream();
    const p = new RunPublisher(stream, RUN, 5, silentLogger(), { deltaFlushMs: 10_000 });
    const chunk = "Lorem ipsum dolor sit amet, «consectetur» adipiscing 😀 elit.\n";
    let text = "";
    while (text.length < 4_300_000) {
      text += chunk;
      p.delta(2, chunk);
      // As a model stream does, let the publishes run between chunks (else the backlog bound drops some).
      await p.drain();
    }
    p.flushText();
    await p.drain();
    const events = await readAll(stream);
    expect(events.length).toBeGreaterThanOrEqual(Math.ceil(Buffer.byteLength(text) / MAX_DELTA_EVENT_BYTES));
    for (const e of events) {
      expect(e.type).toBe("message.delta");
      expect(jsonBytes(e.data)).toBeLessThanOrEqual(MAX_DELTA_EVENT_BYTES);
    }
    expect(events.map((e) => e.data.text).join("")).toBe(text);
    // Numbered N.k under the last coarse id, k from 1 without gaps.
    expect(events.map((e) => e.id)).toEqual(events.map((_, i) => `5.${i + 1}`));
  });

  it("batches small chunks within the flush period into one delta", async () => {
    const stream = memoryStream();
    const p = new RunPublisher(stream, RUN, 1, silentLogger(), { deltaFlushMs: 10_000 });
    p.delta(0, "Hel");
    p.delta(0, "lo");
    expect(await readAll(stream)).toEqual([]); // still batching
    p.flushText();
    await p.drain();
    expect((await readAll(stream)).map((e) => e.data.text)).toEqual(["Hello"]);
  });

  it("bounds the backlog while the stream is down: deltas past it are dropped, coarse events never", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const published: StreamEvent[] = [];
    const stuck: EventStream = {
      ...memoryStream(),
      async publish(_runId, events) {
        await gate; // the stream hangs until released
        published.push(...events);
        return events.length;
      },
    };
    const p = new RunPublisher(stuck, RUN, 1, silentLogger(), { deltaFlushMs: 10_000 });
    // The first publish takes its batch and hangs; everything after piles up behind it.
    p.delta(0, "first");
    p.flushText();
    const big = "y".repeat(MAX_DELTA_EVENT_BYTES);
    for (let i = 0; i < 200; i++) {
      p.delta(0, big);
      p.flushText();
    }
    const coarse = p.coarse([{ runId: RUN, id: 2, type: "step.completed", data: {}, createdAt: new Date() }]);
    release();
    await coarse;
    const deltas = published.filter((e) => e.type === "message.delta");
    const deltaBytes = deltas.slice(1).reduce((n, e) => n + jsonBytes(e.data), 0);
    expect(deltaBytes).toBeLessThanOrEqual(MAX_PENDING_DELTA_BYTES);
    expect(deltas.length).toBeLessThan(201);
    expect(published.some((e) => e.type === "step.completed")).toBe(true);
  });
});
