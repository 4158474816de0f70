import { describe, expect, it } from "vitest";
import { SseParser, type SseMessage } from "./sse-parser.js";

function parse(chunks: string[]): { events: SseMessage[]; retries: number[] } {
  const events: SseMessage[] = [];
  const retries: number[] = [];
  const p = new SseParser({ onEvent: (m) => events.push(m), onRetry: (ms) => retries.push(ms) });
  for (const c of chunks) p.feed(c);
  p.end();
  return { events, retries };
}

/** Every way of cutting `text` into two chunks, plus one character at a time. */
function splits(text: string): string[][] {
  const out: string[][] = [[text], [...text]];
  for (let i = 1; i < text.length; i++) out.push([text.slice(0, i), text.slice(i)]);
  return out;
}

describe("SseParser (WHATWG event stream rules)", () => {
  const stream =
    "\uFEFFretry: 1500\n" +
    ": a comment\n" +
    'id: 1\r\nevent: run.started\r\ndata: {"a":1}\r\n\r\n' +
    "id: 1.1\revent: message.delta\rdata: line one\rdata:line two\r\r" +
    "data: no id or event\n\n" +
    "id: 2\nevent: run.succeeded\ndata\n\n" +
    "id: partial\ndata: never dispatched";

  const expected: SseMessage[] = [
    { id: "1", event: "run.started", data: '{"a":1}' },
    { id: "1.1", event: "message.delta", data: "line one\nline two" },
    { id: "1.1", event: "message", data: "no id or event" },
    { id: "2", event: "run.succeeded", data: "" },
  ];

  it("parses the same events however the stream is chunked (CRLF, CR, LF, BOM, comments, sticky id)", () => {
    for (const chunks of splits(stream)) {
      const { events, retries } = parse(chunks);
      expect(events, JSON.stringify(chunks)).toEqual(expected);
      expect(retries).toEqual([1500]);
    }
  });

  it("ignores events without data, ids containing NUL, non-numeric retry and unknown fields", () => {
    const { events, retries } = parse(["event: x\n\n", "id: a\0b\nretry: 1s\nfoo: bar\ndata: d\n\n"]);
    expect(events).toEqual([{ id: "", event: "message", data: "d" }]);
    expect(retries).toEqual([]);
  });

  it("bounds line and data size", () => {
    const p = new SseParser({ onEvent: () => {}, maxChars: 10 });
    expect(() => p.feed("data: 0123456789abc")).toThrow(/longer than 10/);
    const q = new SseParser({ onEvent: () => {}, maxChars: 10 });
    expect(() => q.feed("data: 012345\ndata: 6789\n")).toThrow(/longer than 10/);
  });
});
