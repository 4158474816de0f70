/**
 * Unknown option names, refused with the closest valid one. A misspelled key
 * must never be ignored: `tool: {…}` for `tools` would start an agent with no
 * tools, and the operator would only see it in the agent's behaviour.
 */
import type { z } from "zod";
import { CapstanError } from "../errors.js";

/** Edit distance (insertions, deletions, substitutions, adjacent swaps), case-insensitive. */
function distance(a: string, b: string): number {
  const x = a.toLowerCase();
  const y = b.toLowerCase();
  const d = Array.from({ length: x.length + 1 }, (_, i) => [i, ...Array<number>(y.length).fill(0)]);
  for (let j = 1; j <= y.length; j++) d[0]![j] = j;
  for (let i = 1; i <= x.length; i++) {
    for (let j = 1; j <= y.length; j++) {
      const row = d[i]!;
      row[j] = Math.min(
        d[i - 1]![j]! + 1,
        row[j - 1]! + 1,
        d[i - 1]![j - 1]! + (x[i - 1] === y[j - 1] ? 0 : 1),
      );
      if (i > 1 && j > 1 && x[i - 1] === y[j - 2] && x[i - 2] === y[j - 1]) {
        row[j] = Math.min(row[j]!, d[i - 2]![j - 2]! + 1);
      }
    }
  }
  return d[x.length]![y.length]!;
}

/**
 * The candidate closest to `word`, if it is a plausible typo: at most a third
 * of the word's letters wrong (at least one allowed), or the word is the start
 * of the candidate (a unit left off: `ttl` for `ttlMs`).
 */
export function closest(word: string, candidates: readonly string[]): string | undefined {
  const w = word.toLowerCase();
  let best: string | undefined;
  let bestD = Infinity;
  for (const c of candidates) {
    const d = distance(word, c);
    const plausible =
      d <= Math.max(1, Math.floor(word.length / 3)) || (w.length >= 3 && c.toLowerCase().startsWith(w));
    if (plausible && d < bestD) [best, bestD] = [c, d];
  }
  return best;
}

/**
 * What to say about one unknown key: `unknown key "tool": did you mean
 * "tools"?`, or the list of known keys when none is close. `prefix` is the
 * dotted path of the object holding the key (e.g. `memory.`), shown on both.
 */
export function unknownKeyMessage(key: string, known: readonly string[], prefix = ""): string {
  const best = closest(key, known);
  return best !== undefined
    ? `unknown key "${prefix}${key}": did you mean "${prefix}${best}"?`
    : `unknown key "${prefix}${key}"; known keys: ${known.map((k) => `"${prefix}${k}"`).join(", ")}`;
}

/**
 * Throws `config_invalid` (`<where>: unknown key …`) for the first key of
 * `raw` not in `known`.
 */
export function refuseUnknownKeys(
  raw: Record<string, unknown>,
  known: readonly string[],
  where: string,
  prefix = "",
): void {
  for (const key of Object.keys(raw)) {
    if (known.includes(key)) continue;
    const message = unknownKeyMessage(key, known, prefix);
    throw new CapstanError("config_invalid", `${where}: ${message}`, {
      fields: [{ field: `${prefix}${key}`, message }],
    });
  }
}

type Def = { type?: string; innerType?: unknown; shape?: unknown; valueType?: unknown; element?: unknown };

const defOf = (s: unknown): Def | undefined => (s as { _zod?: { def?: Def } } | undefined)?._zod?.def;

/**
 * The keys an object schema accepts at `path` inside `schema` (through
 * defaults, optionals, records and arrays), or undefined if there is no
 * object there. Used to suggest a name for zod's `unrecognized_keys` issues.
 */
export function keysAt(schema: z.ZodType, path: readonly PropertyKey[]): string[] | undefined {
  let cur: unknown = schema;
  for (let i = 0; ;) {
    const def = defOf(cur);
    if (def === undefined) return undefined;
    if (
      def.type === "default" ||
      def.type === "optional" ||
      def.type === "nullable" ||
      def.type === "prefault"
    ) {
      cur = def.innerType;
      continue;
    }
    if (i === path.length) {
      return def.type === "object" ? Object.keys(def.shape as Record<string, unknown>) : undefined;
    }
    const seg = path[i++];
    if (def.type === "object") cur = (def.shape as Record<string, unknown>)[String(seg)];
    else if (def.type === "record") cur = def.valueType;
    else if (def.type === "array") cur = def.element;
    else return undefined;
  }
}
