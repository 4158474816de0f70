/**
 * A tool's input schema as JSON Schema: the one conversion from zod, used
 * wherever a tool's schema is hashed or measured (agent versions, cache keys,
 * token estimates). The input side (`io: "input"`, before transforms) is
 * what the model is asked to produce; parts JSON Schema cannot express
 * (`unrepresentable: "any"`) become `{}`.
 *
 * Memoised per zod schema: cache keys and estimates are computed on every
 * step, and tool definitions are built once at load and never mutated.
 */
import { canonicalJson } from "../json.js";
import { z } from "zod";

type Converted = { ok: true; schema: Record<string, unknown>; text: string } | { ok: false; error: unknown };

const converted = new WeakMap<z.ZodType, Converted>();

function convert(input: z.ZodType): Converted {
  let c = converted.get(input);
  if (c === undefined) {
    try {
      const schema = z.toJSONSchema(input, { io: "input", unrepresentable: "any" }) as Record<
        string,
        unknown
      >;
      c = { ok: true, schema, text: canonicalJson(schema) };
    } catch (error) {
      c = { ok: false, error };
    }
    converted.set(input, c);
  }
  return c;
}

/**
 * The JSON Schema of a tool's input. Shared between callers: never mutate it.
 * Throws what zod throws when the schema cannot be converted.
 */
export function toolInputJsonSchema(input: z.ZodType): Readonly<Record<string, unknown>> {
  const c = convert(input);
  if (!c.ok) throw c.error;
  return c.schema;
}

/** `toolInputJsonSchema` as canonical JSON (sorted keys), or "" when it cannot be converted. */
export function toolInputSchemaText(input: z.ZodType): string {
  const c = convert(input);
  return c.ok ? c.text : "";
}
