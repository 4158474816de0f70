/**
 * Lua scripts, kept as `.lua` files beside the code that calls them (each
 * starts with a header stating its KEYS, ARGV and reply) and run through
 * ioredis `defineCommand`. ioredis owns the script cache protocol: the first
 * call on a socket sends the body (EVAL), later ones EVALSHA, and a NOSCRIPT
 * (Redis restarted, SCRIPT FLUSH) makes it resend the body once. So nothing
 * here or in the callers handles NOSCRIPT.
 *
 * Files are read when a store or coordination is created (`loadScript`), from a
 * URL relative to the caller's `import.meta.url`; the build copies every
 * `.lua` file under `src/` to the same place under `dist/`
 * (scripts/copy-assets.mjs), so the compiled code finds them the same way.
 */
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { fileURLToPath } from "node:url";
import type { Redis } from "ioredis";
import { CapstanError } from "../../errors.js";
import { malformed } from "./errors.js";

export interface LuaScript {
  /** The file's name without `.lua`, e.g. "take-tokens". */
  readonly name: string;
  readonly lua: string;
  /**
   * Run atomically on `client`. Failures are ioredis errors: run it inside
   * `RedisConnection.exec`, which bounds the wait and maps them.
   */
  run(client: Redis, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown>;
}

type ScriptCommand = (numKeys: number, ...keysAndArgs: (string | number)[]) => Promise<unknown>;

/** Read a script; a missing file (a build that did not copy it) fails here, at start. */
export function loadScript(file: URL): LuaScript {
  const path = fileURLToPath(file);
  let lua: string;
  try {
    lua = readFileSync(path, "utf8");
  } catch (err) {
    throw new CapstanError(
      "internal",
      `Lua script ${path} is missing (the build copies every .lua file under src/ to dist/)`,
      { cause: err },
    );
  }
  const name = basename(path, ".lua");
  // Prefixed so that no script can shadow an ioredis command method.
  const command = `lua:${name}`;
  const definedOn = new WeakSet<Redis>();
  return {
    name,
    lua,
    run(client, keys, args) {
      if (!definedOn.has(client)) {
        // No numberOfKeys: every call passes its own key count first.
        client.defineCommand(command, { lua });
        definedOn.add(client);
      }
      const fn = (client as unknown as Record<string, ScriptCommand | undefined>)[command];
      if (!fn) throw new CapstanError("internal", `redis script ${name} is not defined`);
      return fn.call(client, keys.length, ...keys, ...args);
    },
  };
}

/** A script reply that must be an array of integers (Lua numbers arrive as integers). */
export function replyInts(reply: unknown, what: string): number[] {
  if (!Array.isArray(reply)) throw malformed(what);
  return reply.map((x: unknown) => {
    const n = typeof x === "number" ? x : typeof x === "string" ? Number(x) : NaN;
    if (!Number.isFinite(n)) throw malformed(what);
    return n;
  });
}
