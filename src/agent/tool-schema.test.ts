import { describe, expect, it } from "vitest";
import { z } from "zod";
import { canonicalJson } from "../json.js";
import { toolInputJsonSchema, toolInputSchemaText } from "./tool-schema.js";

describe("tool input schema", () => {
  const input = z.object({ orderId: z.string().min(1), qty: z.number().int().default(1) });

  it("converts the input side once per zod schema", () => {
    const schema = toolInputJsonSchema(input);
    expect(schema).toEqual(z.toJSONSchema(input, { io: "input", unrepresentable: "any" }));
    // The input side: a defaulted field is optional for the model.
    expect(schema.required).toEqual(["orderId"]);
    expect(toolInputJsonSchema(input)).toBe(schema);
    expect(toolInputSchemaText(input)).toBe(canonicalJson(schema));
  });

  it("turns what JSON Schema cannot express into {} instead of failing", () => {
    const schema = toolInputJsonSchema(z.object({ at: z.date() }));
    expect((schema.properties as Record<string, unknown>).at).toEqual({});
  });

  it("rethrows a failed conversion on every call; the text form is empty", () => {
    const broken = {} as z.ZodType;
    expect(() => toolInputJsonSchema(broken)).toThrow();
    expect(() => toolInputJsonSchema(broken)).toThrow();
    expect(toolInputSchemaText(broken)).toBe("");
  });
});
