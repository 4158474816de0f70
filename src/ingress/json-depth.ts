/**
 * The nesting limit of JSON bodies, checked on the raw text before it is
 * parsed. Everything after the parser recurses over the value (zod's JSON
 * schema, canonical hashing for idempotency, the driver's serialisation), and
 * a value nested a few thousand levels deep overflows the stack in one of
 * them; one linear scan over the text is cheaper than any of them.
 *
 * The scan only tracks brackets outside strings (and the key or index of each
 * open container, to name the field). It does not validate: malformed text
 * within the limit is left to the JSON parser to refuse.
 */

/** What a body nested too deeply is refused with: the path of the first container past the limit. */
export interface DepthProblem {
  /** Dotted path like zod's (`metadata.a.0.b`), shortened when very long. */
  field: string;
  depth: number;
}

interface Frame {
  array: boolean;
  /** Array: the current index. Object: the [start, end] of the current key's string literal. */
  at: number | [number, number] | undefined;
}

const MAX_FIELD_CHARS = 200;

function segment(text: string, f: Frame): string {
  if (typeof f.at === "number") return String(f.at);
  if (!f.at) return "?";
  try {
    const key: unknown = JSON.parse(text.slice(f.at[0], f.at[1] + 1));
    return typeof key === "string" ? key : "?";
  } catch {
    return "?";
  }
}

function pathOf(text: string, stack: Frame[]): string {
  let out = "";
  for (const f of stack) {
    const s = segment(text, f);
    out = out ? `${out}.${s}` : s;
    if (out.length > MAX_FIELD_CHARS) return out.slice(0, MAX_FIELD_CHARS) + "…";
  }
  return out || "body";
}

/** The first place where `text` nests objects/arrays deeper than `maxDepth` (the top level is 1), if any. */
export function jsonDepthProblem(text: string, maxDepth: number): DepthProblem | undefined {
  const stack: Frame[] = [];
  let lastString: [number, number] | undefined;
  const n = text.length;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      const start = i;
      for (i++; i < n; i++) {
        const d = text.charCodeAt(i);
        if (d === 0x5c /* \ */) i++;
        else if (d === 0x22) break;
      }
      lastString = [start, i];
      continue;
    }
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (stack.length >= maxDepth) return { field: pathOf(text, stack), depth: stack.length + 1 };
      stack.push({ array: c === 0x5b, at: c === 0x5b ? 0 : undefined });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x3a /* : */) {
      const top = stack[stack.length - 1];
      if (top && !top.array) top.at = lastString;
    } else if (c === 0x2c /* , */) {
      const top = stack[stack.length - 1];
      if (top?.array && typeof top.at === "number") top.at++;
    }
  }
  return undefined;
}
