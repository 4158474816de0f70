import type { LanguageModelV2, LanguageModelV3 } from "@ai-sdk/provider";
import type { z } from "zod";
import type { Logger } from "../logger.js";
import type { Effect } from "../state/types.js";
import type { AgentCacheConfig, ToolCacheConfig } from "../cost/cache-config.js";
import type { CostModelSettings } from "../cost/config.js";
import type { Script } from "./scripted.js";

export type { Effect };

/** What a tool's `run` receives besides its validated arguments. */
export interface ToolContext {
  /** Stable per (run, tool call) across retries and workers: pass it to external APIs. */
  idempotencyKey: string;
  /**
   * The run's lease epoch: it grows every time a worker takes the run over.
   * A resource that remembers the highest token seen per `idempotencyKey`
   * and refuses lower ones fences out a paused worker that wakes mid-call.
   */
  fencingToken: number;
  /** Aborts on cancel, lease loss, timeout or shutdown. */
  signal: AbortSignal;
  runId: string;
  threadId: string;
  tenantId: string;
  toolCallId: string;
  logger: Logger;
  /**
   * Invalidate cached results of `pure` tools carrying these tags (for this
   * tenant). Call it after the change the tags describe is durable.
   */
  invalidate(tags: string | readonly string[]): Promise<void>;
}

export interface ToolDefinition<I extends z.ZodType = z.ZodType, O = unknown> {
  description: string;
  input: I;
  /** How a call whose outcome is unknown after a crash is handled (docs/agent-sdk.md#effect-classes). */
  effect: Effect;
  /** Pause the run in `waiting` until a human approves or rejects the call. */
  requiresApproval: boolean;
  /** Per-call timeout (ms). */
  timeoutMs: number;
  /** Result cache; `pure` tools only (refused for others at definition time). */
  cache?: ToolCacheConfig;
  /*
   * Method syntax on purpose: parameters of methods are checked bivariantly, so a
   * tool with specific args (`ToolDefinition<ZodObject<…>>`) is assignable to the
   * untyped `ToolDefinition` used in `AgentDefinition.tools`. `this: void` says it
   * may be called detached (users pass arrow functions).
   */
  run(this: void, args: z.infer<I>, ctx: ToolContext): Promise<O> | O;
}

export interface AgentLimits {
  /** Max steps (LLM calls + tool calls) per run. */
  maxSteps: number;
  /** Max input + output tokens per run. */
  maxTokens: number;
  /** Max wall time of a run (ms), measured from its first start. */
  wallTimeMs: number;
}

/**
 * A model: `provider:model` (`openai`, `anthropic`, `compatible`, `scripted`) or an AI SDK
 * language-model instance. (Spelled out rather than `string | LanguageModel` from "ai": that
 * union's gateway model-id literals are redundant next to `string`. Same set of values.)
 */
export type ModelSpec = string | LanguageModelV3 | LanguageModelV2;

export interface AgentDefinition {
  name: string;
  model: ModelSpec;
  instructions: string;
  tools: Record<string, ToolDefinition>;
  limits: AgentLimits;
  /** Model settings passed to every call. */
  temperature?: number;
  maxOutputTokens?: number;
  /** Opt-in LLM response cache (deterministic settings only). */
  cache?: AgentCacheConfig;
  /** Long-term memory: recall before LLM calls and/or the remember/recall tools. */
  memory?: AgentMemoryConfig;
  /** Bounded context: older history is summarised to keep the prompt under this many tokens. */
  context?: { maxTokens: number };
}

export interface AgentMemoryConfig {
  /** Retrieve the k nearest memories to the latest user message and add them to the context. */
  recall?: { k: number; namespace: MemoryNamespace };
  /** Give the agent the built-in `remember` and `recall` tools. */
  tools?: boolean | { namespace: MemoryNamespace };
}

/** `thread` (per conversation), `tenant` (shared), or a fixed name. */
export type MemoryNamespace = "thread" | "tenant" | { name: string };

/** Provider settings for `provider:model` strings (from the config file / environment). */
export interface ModelProviderSettings extends CostModelSettings {
  openai?: { apiKey?: string; baseURL?: string };
  anthropic?: { apiKey?: string; baseURL?: string };
  /** Any OpenAI-compatible chat-completions server (Ollama, vLLM, LM Studio…). */
  compatible?: { baseURL?: string; apiKey?: string; headers?: Record<string, string>; name?: string };
  /**
   * Scripts for `scripted:<name>` models (see ./scripted.ts), added with
   * `registerScript` or written here directly. They shadow the built-ins
   * (`echo`, `tools`) of the same name. Kept on the settings, not in a module
   * global, so two configs in one process never see each other's scripts.
   */
  scripts?: Record<string, Script>;
}

/** What `capstan.config.ts` default-exports (via `defineConfig`). */
export interface CapstanConfig {
  agents: AgentDefinition[];
  models?: ModelProviderSettings;
  /** Server settings layered under environment and flags (see src/config). */
  server?: Record<string, unknown>;
}
