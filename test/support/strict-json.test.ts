import { describe, expect, it } from "vitest";
import { parseStrictJson } from "./strict-json.js";

describe("parseStrictJson", () => {
  it("parses what JSON.parse parses, to the same value", () => {
    const samples = [
      '{"level":40,"msg":"x","err":{"type":"Error","stack":"a\\nb"},"n":-1.5e3,"ok":true,"v":null}',
      '[1, [2, {"a": []}], "\\u00e9\\"", {}]',
      ' "plain" ',
      "0",
    ];
    for (const s of samples) expect(parseStrictJson(s)).toEqual(JSON.parse(s));
  });

  it("refuses a key twice, at the top and nested, naming it", () => {
    expect(() => parseStrictJson('{"attempt":1,"runId":"r","attempt":2}')).toThrow(
      /duplicate key "attempt" in \(root\)/,
    );
    expect(() => parseStrictJson('{"a":{"b":1,"b":1}}')).toThrow(/duplicate key "b" in \.a/);
    expect(() => parseStrictJson('[{"k":1},{"k":2,"k":3}]')).toThrow(/duplicate key "k" in \[1\]/);
    // The same key in sibling objects is fine.
    expect(parseStrictJson('[{"k":1},{"k":2}]')).toEqual([{ k: 1 }, { k: 2 }]);
  });

  it("refuses what is not JSON", () => {
    for (const bad of ['{"a":1,}', "{a:1}", '"\t"', "01", '{"a":1} x', "[1 2]", "'s'", "NaN"]) {
      expect(() => parseStrictJson(bad), bad).toThrow(SyntaxError);
    }
  });
});
