/**
 * Cache configuration of agents and tools (docs/agent-sdk.md#caches), validated when the
 * config is defined or loaded, so a cache that must not exist is refused at
 * start with a clear `config_invalid`, never discovered mid-run.
 *
 *   tool({ ..., effect: "pure", cache: { ttlMs: 60_000, tags: ["catalog"] } })
 *   tool({ ..., effect: "pure", cache: { ttlMs: 60_000, tags: (args) => [`order:${args.id}`] } })
 *   defineAgent({ ..., temperature: 0, cache: { llm: true } })          // or { llm: { ttlMs } }
 *
 * Rules:
 * - Only `pure` tools may have a cache. `idempotent` and `side-effect` tools
 *   must run exactly as journaled; a cache on them is refused (not ignored).
 * - The LLM response cache needs deterministic settings: `temperature: 0`
 *   set explicitly. Unset (provider default, usually 1) or > 0 is refused:
 *   replaying one sample of a random process as "the" answer would silently
 *   change the agent's behaviour.
 * - TTLs are bounded (tool results ≤ 7 days, LLM responses ≤ 30 days).
 * This module only validates; src/cost/cache.ts implements the caches.
 */
import { CapstanError } from "../errors.js";
import { refuseUnknownKeys } from "../config/unknown-keys.js";

export const CACHE_LIMITS = Object.freeze({
  minTtlMs: 1_000,
  maxToolTtlMs: 7 * 24 * 3_600_000,
  maxLlmTtlMs: 30 * 24 * 3_600_000,
  defaultLlmTtlMs: 24 * 3_600_000,
  maxTags: 16,
  maxTagChars: 128,
  maxVersionChars: 64,
  /** Tags in one invalidation request. */
  maxInvalidateTags: 100,
});

/** Bivariant in A (like method parameters), so a tool with typed args fits the untyped ToolDefinition. */
type TagsFn<A> = { bivarianceHack(args: A): readonly string[] }["bivarianceHack"];

/** `tool({ cache })`: a pure tool's result cache. */
export interface ToolCacheConfig<A = unknown> {
  /** How long a result is reused (ms), 1 s … 7 days. */
  ttlMs: number;
  /**
   * Tags for invalidation (`ctx.invalidate(tag)`, `POST /v1/cache/invalidate`):
   * fixed, or computed from the validated arguments. ≤ 16 tags of ≤ 128 characters.
   */
  tags?: readonly string[] | TagsFn<A>;
  /** Bump when the tool's implementation changes in a way its description and schema do not show. */
  version?: string;
}

/** `defineAgent({ cache })` as written. */
export interface AgentCacheOptions {
  /** The LLM response cache: `true` (24 h) or `{ ttlMs }`. Needs `temperature: 0`. */
  llm?: boolean | { ttlMs?: number };
}

/** `defineAgent({ cache })` after validation. */
export interface AgentCacheConfig {
  llm?: { ttlMs: number };
}

function fail(where: string, field: string, message: string): never {
  throw new CapstanError("config_invalid", `${where}: ${field}: ${message}`, {
    fields: [{ field, message }],
  });
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return JSON.stringify(v);
  if (typeof v === "number") return String(v);
  return typeof v;
}

function ttl(where: string, field: string, v: unknown, max: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < CACHE_LIMITS.minTtlMs || v > max) {
    fail(
      where,
      field,
      `must be an integer number of ms from ${CACHE_LIMITS.minTtlMs} to ${max} (got ${describe(v)})`,
    );
  }
  return v;
}

const hasControl = (s: string): boolean => {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f) return true;
  }
  return false;
};

/** A tag is 1..128 characters without control characters. Returns the message when invalid. */
export function tagProblem(tag: unknown): string | undefined {
  if (typeof tag !== "string") return `must be a string (got ${describe(tag)})`;
  if (tag.length === 0 || tag.length > CACHE_LIMITS.maxTagChars)
    return `must be 1 to ${CACHE_LIMITS.maxTagChars} characters`;
  if (hasControl(tag)) return "must not contain control characters";
  return undefined;
}

/**
 * Validate `tool({ cache })` for a tool of the given effect; returns the
 * normalized config (undefined: no cache; `cache: false` counts as none).
 * Call from `normalizeTool` with `where` = e.g. `tool()` or
 * `defineAgent() agent "support" tool "lookup"`.
 */
export function normalizeToolCache(
  raw: unknown,
  effect: unknown,
  where: string,
): ToolCacheConfig | undefined {
  if (raw === undefined || raw === false) return undefined;
  if (effect !== "pure") {
    fail(
      where,
      "cache",
      `only "pure" tools may be cached, and this tool is ${describe(effect)}: its calls must run exactly as ` +
        "journaled (docs/agent-sdk.md#effect-classes), never be served from a cache. " +
        'Remove `cache`, or declare effect: "pure" if the tool only reads or computes',
    );
  }
  if (!isRecord(raw))
    fail(where, "cache", `must be an object like { ttlMs: 60000, tags: [...] } (got ${describe(raw)})`);
  refuseUnknownKeys(raw, ["ttlMs", "tags", "version"], where, "cache.");
  const out: ToolCacheConfig = { ttlMs: ttl(where, "cache.ttlMs", raw.ttlMs, CACHE_LIMITS.maxToolTtlMs) };
  const tags = raw.tags;
  if (typeof tags === "function") {
    out.tags = tags as TagsFn<unknown>;
  } else if (tags !== undefined) {
    if (!Array.isArray(tags)) {
      fail(
        where,
        "cache.tags",
        `must be an array of strings or a function (args) => string[] (got ${describe(tags)})`,
      );
    }
    if (tags.length > CACHE_LIMITS.maxTags) fail(where, "cache.tags", `at most ${CACHE_LIMITS.maxTags} tags`);
    tags.forEach((t: unknown, i) => {
      const problem = tagProblem(t);
      if (problem) fail(where, `cache.tags[${i}]`, problem);
    });
    out.tags = Object.freeze([...(tags as string[])]);
  }
  if (raw.version !== undefined) {
    if (
      typeof raw.version !== "string" ||
      raw.version.length === 0 ||
      raw.version.length > CACHE_LIMITS.maxVersionChars
    ) {
      fail(where, "cache.version", `must be a string of 1 to ${CACHE_LIMITS.maxVersionChars} characters`);
    }
    out.version = raw.version;
  }
  return out;
}

/**
 * Validate `defineAgent({ cache })` against the agent's temperature; returns
 * the normalized config (undefined: no cache). Call from `normalizeAgent`.
 */
export function normalizeAgentCache(
  raw: unknown,
  temperature: unknown,
  where: string,
): AgentCacheConfig | undefined {
  if (raw === undefined || raw === false) return undefined;
  if (!isRecord(raw)) fail(where, "cache", `must be an object like { llm: true } (got ${describe(raw)})`);
  refuseUnknownKeys(raw, ["llm"], where, "cache.");
  const llm = raw.llm;
  if (llm === undefined || llm === false) return undefined;
  let ttlMs = CACHE_LIMITS.defaultLlmTtlMs;
  if (isRecord(llm)) {
    refuseUnknownKeys(llm, ["ttlMs"], where, "cache.llm.");
    if (llm.ttlMs !== undefined) ttlMs = ttl(where, "cache.llm.ttlMs", llm.ttlMs, CACHE_LIMITS.maxLlmTtlMs);
  } else if (llm !== true) {
    fail(where, "cache.llm", `must be true, false or { ttlMs } (got ${describe(llm)})`);
  }
  if (temperature !== 0) {
    fail(
      where,
      "cache.llm",
      "the LLM response cache needs deterministic settings: set temperature: 0 on the agent " +
        `(temperature is ${temperature === undefined ? "unset, so the provider samples" : describe(temperature)})`,
    );
  }
  return { llm: { ttlMs } };
}

/** The parts of an agent the cache rules look at. */
export interface CacheCheckedAgent {
  name: string;
  temperature?: number;
  cache?: unknown;
  tools: Readonly<Record<string, { effect: string; cache?: unknown }>>;
}

/**
 * Check a whole agent (defence in depth at load time, after normalization):
 * the same rules as the two functions above. Throws `config_invalid`.
 */
export function validateCacheConfig(agent: CacheCheckedAgent, where = "config"): void {
  const at = `${where} agent "${agent.name}"`;
  normalizeAgentCache(agent.cache, agent.temperature, at);
  for (const [name, t] of Object.entries(agent.tools))
    normalizeToolCache(t.cache, t.effect, `${at} tool "${name}"`);
}
