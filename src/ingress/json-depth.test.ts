import { describe, expect, it } from "vitest";
import { jsonDepthProblem } from "./json-depth.js";

const nest = (levels: number, leaf = "1"): string => {
  let s = leaf;
  for (let i = 0; i < levels; i++) s = i % 2 === 0 ? `{"a":${s}}` : `[0,${s}]`;
  return s;
};

describe("jsonDepthProblem", () => {
  it("accepts nesting up to the limit, with the top level counting as 1", () => {
    expect(jsonDepthProblem(nest(4), 4)).toBeUndefined();
    expect(jsonDepthProblem("{}", 1)).toBeUndefined();
    expect(jsonDepthProblem('"just a string"', 0)).toBeUndefined();
    expect(jsonDepthProblem("{}", 0)).toEqual({ field: "body", depth: 1 });
  });

  it("names the path to the first container past the limit: keys and array indices", () => {
    const body = `{"metadata":{"x":[1,2,{"deep":${nest(40)}}]}}`;
    const p = jsonDepthProblem(body, 32);
    expect(p?.depth).toBe(33);
    expect(p?.field.startsWith("metadata.x.2.deep.")).toBe(true);
    // The segments after "deep" alternate object key "a" and array index 1 (inside `[0, …]`).
    expect(p?.field.split(".").slice(4, 8)).toEqual(["1", "a", "1", "a"]);
    expect(JSON.parse(body)).toBeTruthy(); // the text itself is valid JSON
  });

  it("ignores brackets, quotes and colons inside strings, and decodes escaped keys", () => {
    const tricky = `{"k\\"[{":"[[[[[[{{{{\\\\","b":{"c\\u0041":[{}]}}`;
    expect(jsonDepthProblem(tricky, 4)).toBeUndefined();
    expect(jsonDepthProblem(tricky, 3)).toEqual({ field: "b.cA.0", depth: 4 });
  });

  it("refuses thousands of levels without recursing (no stack overflow), and shortens the field", () => {
    const deep = "[".repeat(200_000) + "]".repeat(200_000);
    const p = jsonDepthProblem(deep, 32);
    expect(p?.depth).toBe(33);
    expect(p?.field).toBe(Array.from({ length: 32 }, () => "0").join("."));
    const longKeys = `{"${"k".repeat(150)}":{"${"q".repeat(150)}":[[[]]]}}`;
    const f = jsonDepthProblem(longKeys, 3)?.field ?? "";
    expect(f.length).toBeLessThanOrEqual(201);
    expect(f.endsWith("…")).toBe(true);
  });

  it("leaves malformed text within the limit to the parser", () => {
    expect(jsonDepthProblem('{"a": [1, 2', 32)).toBeUndefined();
    expect(jsonDepthProblem("}}]]", 32)).toBeUndefined();
  });
});
