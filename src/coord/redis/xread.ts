/** Stream ids and XREAD replies, shared by plain reads (./events.ts) and blocked ones (./blocking-reader.ts). */
import { parseStreamId, type EventIdParts } from "../event-id.js";
import { malformed } from "./errors.js";

export interface RawEntry {
  id: EventIdParts;
  fields: string[];
}

export function streamId(p: EventIdParts): string {
  return `${p.n}-${p.k}`;
}

function isArr(x: unknown): x is unknown[] {
  return Array.isArray(x);
}

/** XREAD reply → entries per key (absent keys had nothing). Validates the shape instead of trusting it. */
export function parseXread(reply: unknown): Map<string, RawEntry[]> {
  const out = new Map<string, RawEntry[]>();
  if (reply === null) return out;
  if (!isArr(reply)) throw malformed("XREAD");
  for (const item of reply) {
    if (!isArr(item)) throw malformed("XREAD stream");
    const [key, entries] = item;
    if (typeof key !== "string" || !isArr(entries)) throw malformed("XREAD stream");
    out.set(
      key,
      entries.map((entry) => {
        if (!isArr(entry)) throw malformed("XREAD entry");
        const [id, fields] = entry;
        if (typeof id !== "string" || !isArr(fields) || !fields.every((f) => typeof f === "string")) {
          throw malformed("XREAD entry");
        }
        return { id: parseStreamId(id), fields };
      }),
    );
  }
  return out;
}
