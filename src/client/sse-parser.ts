/**
 * A small server-sent events parser following the WHATWG HTML "event stream
 * interpretation" rules: lines end in CRLF, LF or CR (also split across
 * chunks); a leading BOM is dropped; `:` starts a comment; one space after
 * the colon is stripped; `data` lines join with "\n"; `id` is sticky and
 * ignored when it contains NUL; `retry` takes ASCII digits only; an event is
 * dispatched on a blank line and only when it has data; an unterminated
 * event at the end of the stream is discarded.
 *
 * Bounded: a line or an event's data longer than `maxChars` is an error
 * rather than unbounded buffering.
 */

export interface SseMessage {
  /** The last event id seen on this stream (sticky across events), or "" if none. */
  id: string;
  /** `event:` field, or "message". */
  event: string;
  data: string;
}

export interface SseParserOptions {
  onEvent(message: SseMessage): void;
  onRetry?(ms: number): void;
  /** Max characters of one line and of one event's data. Default 16 Mi. */
  maxChars?: number;
}

export class SseParser {
  private buf = "";
  private started = false;
  private skipLf = false;
  private data = "";
  private hasData = false;
  private event = "";
  private lastId = "";
  private readonly maxChars: number;

  constructor(private readonly opts: SseParserOptions) {
    this.maxChars = opts.maxChars ?? 16 * 1024 * 1024;
  }

  /** Feed decoded text. */
  feed(chunk: string): void {
    if (chunk.length === 0) return;
    let text = chunk;
    if (!this.started) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    if (this.skipLf) {
      this.skipLf = false;
      if (text.startsWith("\n")) text = text.slice(1);
    }
    let pos = 0;
    while (pos < text.length) {
      const cr = text.indexOf("\r", pos);
      const lf = text.indexOf("\n", pos);
      let end: number;
      if (cr === -1 && lf === -1) break;
      else if (cr === -1) end = lf;
      else if (lf === -1) end = cr;
      else end = Math.min(cr, lf);
      const line = this.buf + text.slice(pos, end);
      this.buf = "";
      let next = end + 1;
      if (text[end] === "\r") {
        if (next < text.length) {
          if (text[next] === "\n") next++;
        } else {
          this.skipLf = true; // a "\n" opening the next chunk belongs to this "\r"
        }
      }
      this.line(line);
      pos = next;
    }
    if (pos < text.length) {
      this.buf += text.slice(pos);
      if (this.buf.length > this.maxChars)
        throw new Error(`SSE line longer than ${this.maxChars} characters`);
    }
  }

  /** End of stream: a partial event is discarded (per the spec). */
  end(): void {
    this.buf = "";
    this.data = "";
    this.hasData = false;
    this.event = "";
  }

  private line(line: string): void {
    if (line === "") {
      this.dispatch();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "event":
        this.event = value;
        break;
      case "data":
        this.data += this.hasData ? "\n" + value : value;
        this.hasData = true;
        if (this.data.length > this.maxChars)
          throw new Error(`SSE event data longer than ${this.maxChars} characters`);
        break;
      case "id":
        if (!value.includes("\0")) this.lastId = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.opts.onRetry?.(Number(value));
        break;
      default:
        break; // unknown fields are ignored
    }
  }

  private dispatch(): void {
    if (!this.hasData) {
      this.event = "";
      return;
    }
    const msg: SseMessage = { id: this.lastId, event: this.event || "message", data: this.data };
    this.data = "";
    this.hasData = false;
    this.event = "";
    this.opts.onEvent(msg);
  }
}
