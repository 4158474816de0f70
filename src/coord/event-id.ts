import { CapstanError } from "../errors.js";

/**
 * Run event ids (the SSE `id:` field, see `StreamEvent` in ./types.ts).
 *
 * - "N"   — coarse event N (N ≥ 1; "0" is only meaningful as the start cursor "before everything").
 * - "N.k" — the k-th token delta after coarse event N.
 *
 * Ids order by (N, k) numerically. "N.0" is accepted as a cursor and means the same as "N";
 * the canonical spelling (what `formatEventId` produces and what readers receive) is "N".
 * Both parts are non-negative decimal integers without leading zeros, at most
 * `Number.MAX_SAFE_INTEGER`, so every valid id round-trips exactly through a JS number and
 * through a Redis stream entry id "N-k".
 */
export interface EventIdParts {
  n: number;
  k: number;
}

const PART = "(?:0|[1-9][0-9]{0,15})";
const EVENT_ID_RE = new RegExp(`^(${PART})(?:\\.(${PART}))?$`);
const STREAM_ID_RE = new RegExp(`^(${PART})-(${PART})$`);

function toPart(s: string | undefined): number | undefined {
  if (s === undefined) return undefined;
  const v = Number(s);
  return Number.isSafeInteger(v) ? v : undefined;
}

function tryParse(re: RegExp, id: unknown): EventIdParts | undefined {
  if (typeof id !== "string") return undefined;
  const m = re.exec(id);
  if (!m) return undefined;
  const n = toPart(m[1]);
  const k = m[2] === undefined ? 0 : toPart(m[2]);
  if (n === undefined || k === undefined) return undefined;
  return { n, k };
}

/** True for "N" and "N.k" (non-negative integers, no leading zeros, no sign, no spaces). */
export function isValidEventId(id: unknown): id is string {
  return tryParse(EVENT_ID_RE, id) !== undefined;
}

/** Parse "5" → {n: 5, k: 0}, "5.3" → {n: 5, k: 3}. Throws `validation_failed` on anything else. */
export function parseEventId(id: string): EventIdParts {
  const p = tryParse(EVENT_ID_RE, id);
  if (!p) {
    throw new CapstanError(
      "validation_failed",
      `invalid event id ${JSON.stringify(id)}: expected "N" or "N.k"`,
      {
        fields: [{ field: "eventId", message: 'expected "N" or "N.k" with non-negative integers' }],
      },
    );
  }
  return p;
}

/** Canonical spelling: k = 0 → "N", else "N.k". */
export function formatEventId(parts: EventIdParts): string {
  const { n, k } = parts;
  if (!Number.isSafeInteger(n) || n < 0 || !Number.isSafeInteger(k) || k < 0) {
    throw new CapstanError("validation_failed", `invalid event id parts n=${n} k=${k}`);
  }
  return k === 0 ? String(n) : `${n}.${k}`;
}

/** Compare parsed ids: negative when a < b, 0 when equal, positive when a > b. */
export function compareEventIdParts(a: EventIdParts, b: EventIdParts): number {
  return a.n !== b.n ? Math.sign(a.n - b.n) : Math.sign(a.k - b.k);
}

/** Compare two event id strings in stream order (-1, 0, 1). Throws on invalid ids. */
export function compareEventIds(a: string, b: string): number {
  return compareEventIdParts(parseEventId(a), parseEventId(b));
}

/** Event id → Redis stream entry id: "N" → "N-0", "N.k" → "N-k". */
export function toStreamId(id: string): string {
  const { n, k } = parseEventId(id);
  return `${n}-${k}`;
}

/** Redis stream entry id "N-k" → {n, k}. Throws `internal` on malformed input (not ours to validate). */
export function parseStreamId(streamId: string): EventIdParts {
  const p = tryParse(STREAM_ID_RE, streamId);
  if (!p) throw new CapstanError("internal", `unexpected stream entry id ${JSON.stringify(streamId)}`);
  return p;
}

/** Redis stream entry id → canonical event id: "N-0" → "N", "N-k" → "N.k". Throws on malformed input. */
export function fromStreamId(streamId: string): string {
  return formatEventId(parseStreamId(streamId));
}
