import { Writable } from "node:stream";
import { describe, expect, it } from "vitest";
import { FrameWriter } from "./sse.js";

/** A real Writable that records the most bytes it ever held unsent; `consume` false: a client that never reads. */
class Socketish extends Writable {
  peak = 0;
  readonly received: Buffer[] = [];
  constructor(consume: boolean) {
    super({
      highWaterMark: 16 * 1024,
      write: (chunk: Buffer, _enc, done) => {
        if (!consume) return; // never acknowledged: everything stays buffered
        this.received.push(chunk);
        setImmediate(done);
      },
    });
  }
  override write(chunk: unknown, ...rest: never[]): boolean {
    const ok = super.write(chunk, ...rest);
    this.peak = Math.max(this.peak, this.writableLength);
    return ok;
  }
}

const opts = { maxBufferedBytes: 64 * 1024, stallTimeoutMs: 300 };

describe("FrameWriter", () => {
  it("a frame far larger than the bound reaches a reading client intact, never more than bound + slice unsent", async () => {
    const sock = new Socketish(true);
    const w = new FrameWriter(sock, opts, new AbortController().signal, () => {
      throw new Error("must not drop a reading client");
    });
    // Multi-byte characters straddle every slice boundary somewhere.
    const frame = `id: 1\nevent: message.delta\ndata: ${JSON.stringify({ text: "é😀z".repeat(300_000) })}\n\n`;
    const bytes = await w.write(frame);
    expect(bytes).toBe(Buffer.byteLength(frame));
    await new Promise<void>((resolve) => sock.end(resolve));
    expect(Buffer.concat(sock.received).toString("utf8")).toBe(frame);
    expect(bytes).toBeGreaterThan(2_000_000);
    expect(sock.peak).toBeLessThanOrEqual(opts.maxBufferedBytes + 64 * 1024);
    expect(w.partial).toBe(false);
  });

  it("a client that does not read holds at most bound + slice, and is dropped after the stall bound", async () => {
    const sock = new Socketish(false);
    let drops = 0;
    const w = new FrameWriter(sock, opts, new AbortController().signal, () => drops++);
    const frame = "data: " + "x".repeat(4 * 1024 * 1024) + "\n\n";
    await expect(w.write(frame)).rejects.toThrow();
    expect(drops).toBe(1);
    expect(sock.destroyed).toBe(true);
    expect(sock.peak).toBeGreaterThanOrEqual(opts.maxBufferedBytes);
    expect(sock.peak).toBeLessThanOrEqual(opts.maxBufferedBytes + 64 * 1024);
    // The frame was cut short: the stream must be destroyed, never completed.
    expect(w.partial).toBe(true);
  });

  it("sends no heartbeat while blocked or mid-frame; a server shutdown while blocked is not a drop", async () => {
    const sock = new Socketish(false);
    const shutdown = new AbortController();
    let drops = 0;
    const w = new FrameWriter(sock, { ...opts, stallTimeoutMs: 60_000 }, shutdown.signal, () => drops++);
    const pending = w.write("data: " + "y".repeat(200_000) + "\n\n");
    const before = sock.writableLength;
    w.heartbeat();
    expect(sock.writableLength).toBe(before);
    shutdown.abort();
    await expect(pending).rejects.toThrow();
    expect(drops).toBe(0);
    expect(w.partial).toBe(true);
  });

  it("a bound below the socket's high-water mark still drains (the larger of the two applies)", async () => {
    const sock = new Socketish(true);
    const w = new FrameWriter(
      sock,
      { maxBufferedBytes: 1_024, stallTimeoutMs: 2_000 },
      new AbortController().signal,
      () => {
        throw new Error("must not drop a reading client");
      },
    );
    for (let i = 0; i < 20; i++) await w.write(`data: ${"q".repeat(5_000)}\n\n`);
    expect(sock.peak).toBeLessThanOrEqual(16 * 1024 + 1_024);
  });
});
