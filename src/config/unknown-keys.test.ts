import { describe, expect, it } from "vitest";
import { z } from "zod";
import { closest, keysAt, unknownKeyMessage } from "./unknown-keys.js";

describe("closest", () => {
  const keys = ["tools", "temperature", "maxOutputTokens", "limits"];

  it("finds a typo: a letter missing, extra, wrong, swapped, or in the wrong case", () => {
    expect(closest("tool", keys)).toBe("tools");
    expect(closest("toolss", keys)).toBe("tools");
    expect(closest("temprature", keys)).toBe("temperature");
    expect(closest("limtis", keys)).toBe("limits");
    expect(closest("maxoutputtokens", keys)).toBe("maxOutputTokens");
    expect(closest("maxOutput", keys)).toBe("maxOutputTokens"); // a unit or suffix left off
  });

  it("suggests nothing for an unrelated word, or one too far off", () => {
    expect(closest("prompt", keys)).toBeUndefined();
    expect(closest("tx", keys)).toBeUndefined();
    expect(closest("to", keys)).toBeUndefined(); // too short to count as a prefix
    expect(closest("limits", [])).toBeUndefined();
  });

  it("prefers the nearest candidate", () => {
    expect(closest("port", ["host", "port", "ports"])).toBe("port");
    expect(closest("prot", ["host", "port"])).toBe("port");
  });
});

describe("unknownKeyMessage", () => {
  it("suggests or lists, with the path prefix on every name", () => {
    expect(unknownKeyMessage("tool", ["tools", "name"])).toBe('unknown key "tool": did you mean "tools"?');
    expect(unknownKeyMessage("xyz", ["abc", "bcd"], "memory.")).toBe(
      'unknown key "memory.xyz"; known keys: "memory.abc", "memory.bcd"',
    );
  });
});

describe("keysAt", () => {
  const schema = z.object({
    a: z.object({ b: z.strictObject({ c: z.number(), d: z.string() }).optional() }).default({}),
    r: z.record(z.string(), z.object({ e: z.number() })),
    l: z.array(z.object({ f: z.number() })),
  });

  it("walks objects, defaults, optionals, records and arrays", () => {
    expect(keysAt(schema, [])).toEqual(["a", "r", "l"]);
    expect(keysAt(schema, ["a", "b"])).toEqual(["c", "d"]);
    expect(keysAt(schema, ["r", "anything"])).toEqual(["e"]);
    expect(keysAt(schema, ["l", 3])).toEqual(["f"]);
    expect(keysAt(schema, ["a", "b", "c"])).toBeUndefined();
    expect(keysAt(schema, ["nope"])).toBeUndefined();
  });
});
