/**
 * The LLM response cache and the pure-tool result cache (docs/agent-sdk.md#caches), on the
 * coordination `KvCache` (Redis with TTLs; memory in embedded mode). Loss
 * only costs money: every cache error is a miss, never a failed run.
 *
 * Both are scoped per tenant (a tenant never receives another tenant's
 * cached answer or tool result) and keyed by a SHA-256 over everything that
 * determines the answer, so a change of any of it is a miss, never a stale hit:
 *
 * - LLM: model label, system prompt, messages, tools (names, descriptions,
 *   input JSON schemas), parameters (temperature, maxOutputTokens) and
 *   `agentVersion(agent)`. Opt-in per agent, only with `temperature: 0`
 *   (see ./cache-config.ts). Only complete responses (finish reason `stop` or
 *   `tool-calls`) are stored.
 * - Tools: tool name, the tool's description, input schema and
 *   `cache.version`, the validated arguments, and the current version of
 *   each of its tags. Only `pure` tools with a `cache` config; only successful
 *   results are stored.
 *
 * Tag invalidation without scanning: each (tenant, tag) has a version key;
 * entry keys mix in the versions of their tags, and `invalidate(tag)` writes
 * a fresh random version, so every older entry becomes unreachable at once
 * and expires by its TTL. A version key lives longer than the longest entry
 * TTL, so when it expires (and reads as "0" again) every entry made under
 * "0" is already gone. A result computed while an invalidation happens is
 * stored under the version it read, which nobody asks for anymore.
 */
import { canonicalJson } from "../json.js";
import { createHash, randomBytes } from "node:crypto";
import { agentVersion } from "../agent/define.js";
import { toolInputSchemaText } from "../agent/tool-schema.js";
import { modelLabel } from "../agent/models.js";
import type { AgentDefinition, ToolDefinition } from "../agent/types.js";
import type { KvCache } from "../coord/types.js";
import { CapstanError } from "../errors.js";
import type { Logger } from "../logger.js";
import { CACHE_LIMITS, tagProblem, type AgentCacheConfig, type ToolCacheConfig } from "./cache-config.js";

export interface CacheEvent {
  kind: "llm" | "tool";
  outcome: "hit" | "miss" | "store" | "error";
  /** LLM hits: the tokens the hit avoided. */
  tokensSaved?: number;
}

export interface CacheHooks {
  /** Every lookup (hit/miss), store, and swallowed error: for metrics. Must not throw. */
  onCache?(event: CacheEvent): void;
}

/** An agent as the caches see it (`cache` is the validated agent option). */
export type CacheableAgent = AgentDefinition & { cache?: AgentCacheConfig };
/** A tool as the caches see it (`cache` is the validated tool option). */
export type CacheableTool = Pick<ToolDefinition, "description" | "input" | "effect"> & {
  cache?: ToolCacheConfig;
};

export interface CachedLlmResult {
  response: {
    text: string;
    toolCalls: { toolCallId: string; toolName: string; input: unknown }[];
    finishReason: string;
  };
  usage: { inputTokens: number; outputTokens: number; cachedInputTokens?: number };
}

/** Largest cached value (serialised); bigger results are simply not cached. Default 512 KiB. */
const DEFAULT_MAX_VALUE_BYTES = 512 * 1024;
/** Tag versions outlive every entry (see above). */
const TAG_VERSION_TTL_MS = CACHE_LIMITS.maxToolTtlMs + 24 * 3_600_000;
const CACHEABLE_FINISH = new Set(["stop", "tool-calls"]);

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const sha256 = (s: string): string => createHash("sha256").update(s).digest("hex");

/* ------------------------------------------------------------------------- */
/* LLM response cache                                                         */
/* ------------------------------------------------------------------------- */

export interface LlmCacheKeyInput {
  tenantId: string;
  agent: CacheableAgent;
  /** The system prompt sent; default the agent's instructions. */
  system?: string;
  /** The messages sent (AI SDK ModelMessages). */
  messages: readonly unknown[];
}

/** The cache key of one LLM call (a function of what determines its answer). */
export function llmCacheKey(input: LlmCacheKeyInput): string {
  const a = input.agent;
  const tools = Object.keys(a.tools)
    .sort()
    .map((name) => {
      const t = a.tools[name]!;
      return [name, t.description, toolInputSchemaText(t.input)];
    });
  const material = canonicalJson([
    "capstan-llm-v1",
    input.tenantId,
    agentVersion(a),
    modelLabel(a.model),
    input.system ?? a.instructions,
    tools,
    { temperature: a.temperature ?? null, maxOutputTokens: a.maxOutputTokens ?? null },
    input.messages,
  ]);
  return `llm:${sha256(material)}`;
}

export interface LlmCacheLookup {
  /** False when the agent has no LLM cache: `hit` is null and `store` does nothing. */
  enabled: boolean;
  hit: CachedLlmResult | null;
  /** Input + output tokens of the hit (0 on a miss): what the hit saved. */
  tokensSaved: number;
  /** After a miss and a successful call: keep the result (complete responses only). Never throws. */
  store(result: CachedLlmResult): Promise<void>;
}

export interface LlmCache {
  lookup(input: LlmCacheKeyInput): Promise<LlmCacheLookup>;
}

export interface CacheOptions {
  cache: KvCache;
  logger: Logger;
  hooks?: CacheHooks;
  maxValueBytes?: number;
}

const DISABLED_LLM: LlmCacheLookup = { enabled: false, hit: null, tokensSaved: 0, store: async () => {} };

function parseLlmValue(raw: string): CachedLlmResult | null {
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    return null;
  }
  if (!isRecord(v) || v.v !== 1 || !isRecord(v.response) || !isRecord(v.usage)) return null;
  const r = v.response;
  const u = v.usage;
  if (typeof r.text !== "string" || typeof r.finishReason !== "string" || !Array.isArray(r.toolCalls))
    return null;
  if (typeof u.inputTokens !== "number" || typeof u.outputTokens !== "number") return null;
  const toolCalls: CachedLlmResult["response"]["toolCalls"] = [];
  for (const c of r.toolCalls as unknown[]) {
    if (!isRecord(c) || typeof c.toolCallId !== "string" || typeof c.toolName !== "string") return null;
    toolCalls.push({ toolCallId: c.toolCallId, toolName: c.toolName, input: c.input });
  }
  return {
    response: { text: r.text, toolCalls, finishReason: r.finishReason },
    usage: {
      inputTokens: u.inputTokens,
      outputTokens: u.outputTokens,
      ...(typeof u.cachedInputTokens === "number" ? { cachedInputTokens: u.cachedInputTokens } : {}),
    },
  };
}

export function createLlmCache(opts: CacheOptions): LlmCache {
  const log = opts.logger.child({ component: "cost.cache" });
  const maxBytes = opts.maxValueBytes ?? DEFAULT_MAX_VALUE_BYTES;
  const emit = (e: CacheEvent): void => {
    try {
      opts.hooks?.onCache?.(e);
    } catch {
      // metrics must never break a run
    }
  };
  return {
    async lookup(input) {
      const ttlMs = input.agent.cache?.llm?.ttlMs;
      // Defence in depth: the loader refuses this config, but never replay a sampled answer.
      if (ttlMs === undefined || input.agent.temperature !== 0) return DISABLED_LLM;
      const key = llmCacheKey(input);
      let hit: CachedLlmResult | null = null;
      try {
        const raw = await opts.cache.get(key);
        hit = raw === null ? null : parseLlmValue(raw);
      } catch (err) {
        emit({ kind: "llm", outcome: "error" });
        log.debug({ err }, "LLM cache read failed; treating as a miss");
      }
      const tokensSaved = hit ? hit.usage.inputTokens + hit.usage.outputTokens : 0;
      emit(hit ? { kind: "llm", outcome: "hit", tokensSaved } : { kind: "llm", outcome: "miss" });
      return {
        enabled: true,
        hit,
        tokensSaved,
        async store(result) {
          if (hit || !CACHEABLE_FINISH.has(result.response.finishReason)) return;
          const value = JSON.stringify({ v: 1, response: result.response, usage: result.usage });
          if (Buffer.byteLength(value, "utf8") > maxBytes) return;
          try {
            await opts.cache.set(key, value, ttlMs);
            emit({ kind: "llm", outcome: "store" });
          } catch (err) {
            emit({ kind: "llm", outcome: "error" });
            log.debug({ err }, "LLM cache write failed");
          }
        },
      };
    },
  };
}

/* ------------------------------------------------------------------------- */
/* Pure-tool result cache                                                     */
/* ------------------------------------------------------------------------- */

export interface ToolCacheLookupInput {
  tenantId: string;
  toolName: string;
  tool: CacheableTool;
  /** The validated arguments. */
  args: unknown;
}

export interface ToolCacheLookup {
  /** False when the tool is not cached (not pure, no `cache`, or its tags could not be computed). */
  enabled: boolean;
  hit: { value: unknown } | null;
  /** After a miss and a successful run: keep the (JSON) result. Never throws. */
  store(value: unknown): Promise<void>;
}

export interface ToolCache {
  lookup(input: ToolCacheLookupInput): Promise<ToolCacheLookup>;
  /**
   * Invalidate tags for a tenant: every cached result carrying one of them
   * is a miss from now on. Throws `validation_failed` for a malformed tag
   * and `redis_unavailable` when it could not be recorded (the caller must
   * retry: entries made before stay valid otherwise). Returns the tags.
   */
  invalidate(tenantId: string, tags: string | readonly string[]): Promise<string[]>;
}

const DISABLED_TOOL: ToolCacheLookup = { enabled: false, hit: null, store: async () => {} };

const toolVersions = new WeakMap<object, string>();
function toolVersion(name: string, t: CacheableTool): string {
  let v = toolVersions.get(t);
  if (v === undefined) {
    v = sha256(
      canonicalJson([name, t.description, toolInputSchemaText(t.input), t.cache?.version ?? null]),
    ).slice(0, 32);
    toolVersions.set(t, v);
  }
  return v;
}

const tagKey = (tenantId: string, tag: string): string => `tag:${tenantId}:${sha256(tag).slice(0, 32)}`;

export function createToolCache(opts: CacheOptions): ToolCache {
  const log = opts.logger.child({ component: "cost.cache" });
  const maxBytes = opts.maxValueBytes ?? DEFAULT_MAX_VALUE_BYTES;
  const emit = (e: CacheEvent): void => {
    try {
      opts.hooks?.onCache?.(e);
    } catch {
      // metrics must never break a run
    }
  };

  function tagsOf(input: ToolCacheLookupInput): string[] | undefined {
    const spec = input.tool.cache?.tags;
    if (spec === undefined) return [];
    let tags: unknown;
    try {
      tags = typeof spec === "function" ? spec(input.args) : spec;
    } catch (err) {
      log.warn({ err, tool: input.toolName }, "cache tags function threw; not caching this call");
      return undefined;
    }
    if (!Array.isArray(tags) || tags.length > CACHE_LIMITS.maxTags || tags.some((t) => tagProblem(t))) {
      log.warn(
        { tool: input.toolName },
        `cache tags must be ≤ ${CACHE_LIMITS.maxTags} strings of 1..${CACHE_LIMITS.maxTagChars} characters; not caching this call`,
      );
      return undefined;
    }
    return [...new Set(tags as string[])].sort();
  }

  return {
    async lookup(input) {
      const cfg = input.tool.cache;
      if (!cfg) return DISABLED_TOOL;
      if (input.tool.effect !== "pure") {
        // Refused at load (./cache-config.ts); never serve a non-pure tool from a cache.
        log.error(
          { tool: input.toolName, effect: input.tool.effect },
          "cache config on a non-pure tool ignored",
        );
        return DISABLED_TOOL;
      }
      const tags = tagsOf(input);
      if (!tags) return DISABLED_TOOL;
      let key: string;
      let hit: { value: unknown } | null = null;
      try {
        const versions = await Promise.all(tags.map((t) => opts.cache.get(tagKey(input.tenantId, t))));
        key =
          "tool:" +
          sha256(
            canonicalJson([
              "capstan-tool-v1",
              input.tenantId,
              input.toolName,
              toolVersion(input.toolName, input.tool),
              input.args ?? null,
              tags.map((t, i) => [t, versions[i] ?? "0"]),
            ]),
          );
        const raw = await opts.cache.get(key);
        if (raw !== null) {
          const v: unknown = JSON.parse(raw);
          if (isRecord(v) && v.v === 1 && "value" in v) hit = { value: v.value };
        }
      } catch (err) {
        // Without the tag versions there is no safe key: do not cache this call at all.
        emit({ kind: "tool", outcome: "error" });
        log.debug({ err, tool: input.toolName }, "tool cache read failed; running the tool");
        return DISABLED_TOOL;
      }
      emit({ kind: "tool", outcome: hit ? "hit" : "miss" });
      return {
        enabled: true,
        hit,
        async store(value) {
          if (hit) return;
          let text: string;
          try {
            text = JSON.stringify({ v: 1, value: value ?? null });
          } catch {
            return;
          }
          if (Buffer.byteLength(text, "utf8") > maxBytes) return;
          try {
            await opts.cache.set(key, text, cfg.ttlMs);
            emit({ kind: "tool", outcome: "store" });
          } catch (err) {
            emit({ kind: "tool", outcome: "error" });
            log.debug({ err, tool: input.toolName }, "tool cache write failed");
          }
        },
      };
    },

    async invalidate(tenantId, tags) {
      const list = [...new Set(typeof tags === "string" ? [tags] : tags)];
      const fields = list.flatMap((t, i) => {
        const problem = tagProblem(t);
        return problem ? [{ field: `tags[${i}]`, message: problem }] : [];
      });
      if (list.length > CACHE_LIMITS.maxInvalidateTags) {
        fields.push({ field: "tags", message: `at most ${CACHE_LIMITS.maxInvalidateTags} tags at once` });
      }
      if (fields.length > 0) {
        throw new CapstanError(
          "validation_failed",
          "invalid cache tags: " + fields.map((f) => `${f.field}: ${f.message}`).join("; "),
          { fields },
        );
      }
      await Promise.all(
        list.map((t) =>
          opts.cache.set(tagKey(tenantId, t), randomBytes(12).toString("hex"), TAG_VERSION_TTL_MS),
        ),
      );
      return list;
    },
  };
}
