import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { isCapstanError } from "../../errors.js";
import { loadScript, replyInts } from "./scripts.js";

const SRC = fileURLToPath(new URL("../../", import.meta.url));
const files = (ext: string): string[] =>
  readdirSync(SRC, { recursive: true, encoding: "utf8" }).filter((f) => f.endsWith(ext));

describe("Lua script files", () => {
  const scripts = files(".lua");

  it("exist under src/", () => {
    expect(scripts.length).toBeGreaterThan(0);
  });

  it.each(scripts)("%s starts with a header stating its KEYS, ARGV and reply", (file) => {
    const lines = readFileSync(join(SRC, file), "utf8").split("\n");
    expect(lines[0], "first line is a comment").toMatch(/^-- \S/);
    const header = lines
      .slice(
        0,
        lines.findIndex((l) => !l.startsWith("--")),
      )
      .join("\n");
    expect(header).toMatch(/^-- KEYS/m);
    expect(header).toMatch(/^-- ARGV/m);
    expect(header).toMatch(/^-- Reply:/m);
  });

  it("every script a module loads is there (the path it builds from import.meta.url)", () => {
    const loaded: string[] = [];
    for (const ts of files(".ts").filter((f) => !f.endsWith(".test.ts"))) {
      const text = readFileSync(join(SRC, ts), "utf8");
      for (const m of text.matchAll(/new URL\("(\.\/[^"]+\.lua)", import\.meta\.url\)/g)) {
        loaded.push(join(join(ts, ".."), m[1]!));
      }
    }
    expect(loaded.length).toBeGreaterThan(0);
    expect(loaded.filter((f) => !scripts.includes(f))).toEqual([]);
    // …and no script file lies unused.
    expect(scripts.filter((f) => !loaded.includes(f))).toEqual([]);
  });
});

describe("loadScript", () => {
  it("names the script after its file", () => {
    const s = loadScript(new URL("./lua/take-tokens.lua", import.meta.url));
    expect(s.name).toBe("take-tokens");
    expect(s.lua).toContain("redis.call");
  });

  it("fails at load, naming the file, when the file is missing (a build that did not copy it)", () => {
    let err: unknown;
    try {
      loadScript(new URL("./lua/no-such-script.lua", import.meta.url));
    } catch (e) {
      err = e;
    }
    expect(isCapstanError(err, "internal"), String(err)).toBe(true);
    expect(String((err as Error).message)).toContain("no-such-script.lua");
  });
});

describe("replyInts", () => {
  it("accepts integers and integer strings, refuses anything else as malformed", () => {
    expect(replyInts([1, "2", 0], "x")).toEqual([1, 2, 0]);
    for (const bad of [null, "1", [1, "a"], [1, null]]) {
      expect(() => replyInts(bad, "x")).toThrow(/malformed redis reply: x/);
    }
  });
});
