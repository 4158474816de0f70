/**
 * The agent-definition SDK (docs/agent-sdk.md): `tool`, `defineAgent`, `defineConfig`.
 *
 * Everything is validated when it is defined, so a broken config fails at
 * start with a message that says what to fix, never mid-run. The results are
 * plain objects (no classes, no hidden registries): a config loaded through a
 * different copy of this module (the config file's own `capstan` import) is
 * still accepted, because validation is structural and idempotent.
 */
import { canonicalJson } from "../json.js";
import { createHash } from "node:crypto";
import { z } from "zod";
import { CapstanError } from "../errors.js";
import { isLanguageModelInstance, modelLabel, parseModelSpec } from "./models.js";
import { toolInputJsonSchema } from "./tool-schema.js";
import { costModelSettings } from "../cost/config.js";
import { unknownSettingKeys } from "../config/config.js";
import { keysAt, refuseUnknownKeys, unknownKeyMessage } from "../config/unknown-keys.js";
import {
  normalizeAgentCache,
  normalizeToolCache,
  type AgentCacheOptions,
  type ToolCacheConfig,
} from "../cost/cache-config.js";
import type {
  AgentDefinition,
  AgentLimits,
  AgentMemoryConfig,
  MemoryNamespace,
  CapstanConfig,
  Effect,
  ModelProviderSettings,
  ModelSpec,
  ToolContext,
  ToolDefinition,
} from "./types.js";

export const EFFECTS: readonly Effect[] = ["pure", "idempotent", "side-effect"];
export const AGENT_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;
/** The intersection of what OpenAI, Anthropic and compatible servers accept as a function name. */
export const TOOL_NAME = /^[a-zA-Z0-9_-]{1,64}$/;

export const DEFAULT_TOOL_TIMEOUT_MS = 60_000;
export const DEFAULT_LIMITS: Readonly<AgentLimits> = Object.freeze({
  maxSteps: 25,
  maxTokens: 200_000,
  wallTimeMs: 600_000,
});

/** Any zod object schema (`z.object`, `.strict()`, `.passthrough()`, …). */
export type ZodObjectSchema = z.ZodObject<z.core.$ZodShape, z.core.$ZodObjectConfig>;

/** What users pass to `tool()`. */
export interface ToolOptions<I extends ZodObjectSchema, O> {
  /** Shown to the model: say what the tool does and when to use it. */
  description: string;
  /** Arguments schema; must be a zod object. Validated before `run` is called. */
  input: I;
  effect: Effect;
  /** Default false. */
  requiresApproval?: boolean;
  /** Default 60000. */
  timeoutMs?: number;
  /** Result cache with TTL and tags; `pure` tools only. */
  cache?: ToolCacheConfig<z.infer<I>>;
  run: (args: z.infer<I>, ctx: ToolContext) => Promise<O> | O;
}

/** What users pass to `defineAgent()`. */
export interface AgentOptions {
  name: string;
  model: ModelSpec;
  instructions: string;
  /** Keyed by tool name, as the model will see it. Default: none. */
  tools?: Record<string, ToolDefinition>;
  /** Each field defaults separately (25 steps, 200000 tokens, 600000 ms). */
  limits?: Partial<AgentLimits>;
  temperature?: number;
  maxOutputTokens?: number;
  /** Opt-in LLM response cache: needs `temperature: 0`. */
  cache?: AgentCacheOptions;
  memory?: AgentMemoryConfig;
  context?: { maxTokens: number };
}

/** What users pass to `defineConfig()`. */
export interface ConfigOptions {
  agents: AgentDefinition[];
  models?: ModelProviderSettings;
  server?: Record<string, unknown>;
}

/*
 * The option names each function accepts. An unknown one is refused with the
 * closest of these (a typo like `tool` for `tools` must not be ignored).
 */
const TOOL_KEYS = [
  "description",
  "input",
  "effect",
  "requiresApproval",
  "timeoutMs",
  "cache",
  "run",
] as const;
const AGENT_KEYS = [
  "name",
  "model",
  "instructions",
  "tools",
  "limits",
  "temperature",
  "maxOutputTokens",
  "cache",
  "memory",
  "context",
] as const;
const CONFIG_KEYS = ["agents", "models", "server"] as const;
// Checked by the compiler: each list names exactly the fields of its options type.
type Exactly<A, B> = [A] extends [B] ? ([B] extends [A] ? true : never) : never;
const _keysMatch: [
  Exactly<(typeof TOOL_KEYS)[number], keyof ToolOptions<ZodObjectSchema, unknown>>,
  Exactly<(typeof AGENT_KEYS)[number], keyof AgentOptions>,
  Exactly<(typeof CONFIG_KEYS)[number], keyof ConfigOptions>,
] = [true, true, true];

/** Defines a tool. Throws `config_invalid` if an option is wrong. */
export function tool<I extends ZodObjectSchema, O>(opts: ToolOptions<I, O>): ToolDefinition<I, O> {
  return normalizeTool(opts, "tool()") as ToolDefinition<I, O>;
}

/** Defines an agent, applying defaults. Throws `config_invalid` if an option is wrong. */
export function defineAgent(opts: AgentOptions): AgentDefinition {
  return normalizeAgent(opts, "defineAgent()");
}

/** Defines the config a `capstan.config.ts` default-exports. Refuses duplicate agent names. */
export function defineConfig(cfg: ConfigOptions): CapstanConfig {
  return normalizeConfig(cfg, "defineConfig()");
}

/* ------------------------------------------------------------------------- */

function fail(where: string, field: string, message: string): never {
  throw new CapstanError("config_invalid", `${where}: ${field ? `${field}: ` : ""}${message}`, {
    fields: field ? [{ field, message }] : undefined,
  });
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/**
 * A zod 4 object schema, recognised structurally (`_zod.def.type`) so that a
 * schema built by another copy of zod (e.g. the config file's) is accepted.
 */
export function isZodObject(v: unknown): v is ZodObjectSchema {
  if (!isRecord(v) || !isRecord(v._zod) || !isRecord(v._zod.def)) return false;
  return v._zod.def.type === "object" && typeof v.safeParse === "function";
}

function describe(v: unknown): string {
  if (v === null) return "null";
  if (Array.isArray(v)) return "an array";
  if (typeof v === "string") return JSON.stringify(v);
  return typeof v;
}

const MIN_CONTEXT_TOKENS = 256;

function positiveInt(where: string, field: string, v: unknown): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v <= 0) {
    fail(where, field, `must be a positive integer (got ${describe(v)})`);
  }
  return v;
}

/**
 * Validates a tool and fills defaults. Idempotent: a normalized tool passes
 * unchanged (apart from being copied).
 */
export function normalizeTool(raw: unknown, where: string): ToolDefinition {
  if (!isRecord(raw))
    fail(where, "", `a tool must be an object made with tool({...}) (got ${describe(raw)})`);
  refuseUnknownKeys(raw, TOOL_KEYS, where);
  const { description, input, effect, requiresApproval, timeoutMs, run, cache } = raw;
  if (typeof description !== "string" || description.trim() === "") {
    fail(
      where,
      "description",
      "must be a non-empty string (the model reads it to decide when to call the tool)",
    );
  }
  if (!isZodObject(input)) {
    fail(
      where,
      "input",
      `must be a zod object schema, e.g. input: z.object({ orderId: z.string() }) (got ${describe(input)}); ` +
        "use z.object({}) for a tool without arguments",
    );
  }
  if (typeof effect !== "string" || !(EFFECTS as readonly string[]).includes(effect)) {
    fail(
      where,
      "effect",
      `must be one of ${EFFECTS.map((e) => `"${e}"`).join(", ")} (got ${describe(effect)})`,
    );
  }
  if (requiresApproval !== undefined && typeof requiresApproval !== "boolean") {
    fail(where, "requiresApproval", `must be a boolean (got ${describe(requiresApproval)})`);
  }
  if (typeof run !== "function") {
    fail(where, "run", `must be a function (args, ctx) => result (got ${describe(run)})`);
  }
  const out: ToolDefinition = {
    description,
    input,
    effect: effect as Effect,
    requiresApproval: requiresApproval ?? false,
    timeoutMs: timeoutMs === undefined ? DEFAULT_TOOL_TIMEOUT_MS : positiveInt(where, "timeoutMs", timeoutMs),
    run: run as ToolDefinition["run"],
  };
  const c = normalizeToolCache(cache, effect, where);
  if (c) out.cache = c;
  return out;
}

/** Validates an agent and fills defaults. Idempotent on its own output. */
export function normalizeAgent(raw: unknown, where: string): AgentDefinition {
  if (!isRecord(raw))
    fail(where, "", `an agent must be an object made with defineAgent({...}) (got ${describe(raw)})`);
  // Before any other check, so that a misspelled `name` is reported as such.
  refuseUnknownKeys(raw, AGENT_KEYS, typeof raw.name === "string" ? `${where} agent "${raw.name}"` : where);
  const { name, model, instructions, tools, limits, temperature, maxOutputTokens, cache, memory, context } =
    raw;
  if (typeof name !== "string" || !AGENT_NAME.test(name)) {
    fail(
      where,
      "name",
      `must match ${String(AGENT_NAME)}: lowercase letters, digits, "_" and "-", starting with a letter ` +
        `or digit, at most 64 characters (got ${describe(name)})`,
    );
  }
  const at = `${where} agent "${name}"`;

  if (typeof model === "string") {
    try {
      parseModelSpec(model);
    } catch (err) {
      fail(at, "model", err instanceof Error ? err.message : String(err));
    }
  } else if (!isLanguageModelInstance(model)) {
    fail(
      at,
      "model",
      `must be a "provider:model" string or an AI SDK language-model instance (got ${describe(model)})`,
    );
  }

  if (typeof instructions !== "string") {
    fail(at, "instructions", `must be a string (the system prompt) (got ${describe(instructions)})`);
  }

  const outTools: Record<string, ToolDefinition> = {};
  if (tools !== undefined) {
    if (!isRecord(tools)) fail(at, "tools", `must be an object keyed by tool name (got ${describe(tools)})`);
    for (const [toolName, t] of Object.entries(tools)) {
      if (!TOOL_NAME.test(toolName)) {
        fail(
          at,
          `tools.${toolName}`,
          `tool name must match ${String(TOOL_NAME)} (letters, digits, "_" and "-", 1 to 64 characters), ` +
            "which every model provider accepts",
        );
      }
      outTools[toolName] = normalizeTool(t, `${at} tool "${toolName}"`);
    }
  }

  let outLimits: AgentLimits = { ...DEFAULT_LIMITS };
  if (limits !== undefined) {
    if (!isRecord(limits)) fail(at, "limits", `must be an object (got ${describe(limits)})`);
    refuseUnknownKeys(limits, Object.keys(DEFAULT_LIMITS), at, "limits.");
    outLimits = {
      maxSteps:
        limits.maxSteps === undefined
          ? DEFAULT_LIMITS.maxSteps
          : positiveInt(at, "limits.maxSteps", limits.maxSteps),
      maxTokens:
        limits.maxTokens === undefined
          ? DEFAULT_LIMITS.maxTokens
          : positiveInt(at, "limits.maxTokens", limits.maxTokens),
      wallTimeMs:
        limits.wallTimeMs === undefined
          ? DEFAULT_LIMITS.wallTimeMs
          : positiveInt(at, "limits.wallTimeMs", limits.wallTimeMs),
    };
  }

  const agent: AgentDefinition = {
    name,
    model,
    instructions,
    tools: outTools,
    limits: outLimits,
  };
  if (temperature !== undefined) {
    if (typeof temperature !== "number" || !Number.isFinite(temperature) || temperature < 0) {
      fail(at, "temperature", `must be a non-negative number (got ${describe(temperature)})`);
    }
    agent.temperature = temperature;
  }
  if (maxOutputTokens !== undefined) {
    agent.maxOutputTokens = positiveInt(at, "maxOutputTokens", maxOutputTokens);
  }
  const c = normalizeAgentCache(cache, agent.temperature, at);
  if (c) agent.cache = c;
  if (memory !== undefined) agent.memory = normalizeMemory(at, memory);
  if (context !== undefined) {
    if (!isRecord(context)) fail(at, "context", `must be { maxTokens } (got ${describe(context)})`);
    refuseUnknownKeys(context, ["maxTokens"], at, "context.");
    const maxTokens = positiveInt(at, "context.maxTokens", context.maxTokens);
    // Below this the summary reserve and one turn cannot both fit.
    if (maxTokens < MIN_CONTEXT_TOKENS) {
      fail(at, "context.maxTokens", `must be at least ${MIN_CONTEXT_TOKENS} (got ${maxTokens})`);
    }
    agent.context = { maxTokens };
  }
  return agent;
}

const stringRecord = z.record(z.string(), z.string());
const modelSettingsSchema = z
  .object({
    openai: z.object({ apiKey: z.string().optional(), baseURL: z.string().optional() }).strict().optional(),
    anthropic: z
      .object({ apiKey: z.string().optional(), baseURL: z.string().optional() })
      .strict()
      .optional(),
    compatible: z
      .object({
        baseURL: z.string().optional(),
        apiKey: z.string().optional(),
        headers: stringRecord.optional(),
        name: z.string().optional(),
      })
      .strict()
      .optional(),
    ...costModelSettings,
    scripts: z
      .record(
        z.string(),
        z.custom<unknown>((v) => typeof v === "function", "must be a function (info) => turn"),
      )
      .optional(),
  })
  .strict();

function normalizeNamespace(at: string, field: string, raw: unknown): MemoryNamespace {
  if (raw === undefined || raw === "thread") return "thread";
  if (raw === "tenant") return "tenant";
  if (isRecord(raw)) refuseUnknownKeys(raw, ["name"], at, `${field}.`);
  if (isRecord(raw) && typeof raw.name === "string" && /^[A-Za-z0-9:_.-]{1,200}$/.test(raw.name)) {
    return { name: raw.name };
  }
  fail(at, field, `must be "thread", "tenant" or { name } (got ${describe(raw)})`);
}

function normalizeMemory(at: string, raw: unknown): AgentMemoryConfig {
  if (!isRecord(raw)) fail(at, "memory", `must be { recall?, tools? } (got ${describe(raw)})`);
  refuseUnknownKeys(raw, ["recall", "tools"], at, "memory.");
  const out: AgentMemoryConfig = {};
  if (raw.recall !== undefined) {
    if (!isRecord(raw.recall)) fail(at, "memory.recall", "must be { k, namespace? }");
    refuseUnknownKeys(raw.recall, ["k", "namespace"], at, "memory.recall.");
    const k = positiveInt(at, "memory.recall.k", raw.recall.k ?? 5);
    if (k > 100) fail(at, "memory.recall.k", "must be at most 100");
    out.recall = { k, namespace: normalizeNamespace(at, "memory.recall.namespace", raw.recall.namespace) };
  }
  if (raw.tools !== undefined) {
    if (typeof raw.tools === "boolean") out.tools = raw.tools;
    else if (isRecord(raw.tools)) {
      refuseUnknownKeys(raw.tools, ["namespace"], at, "memory.tools.");
      out.tools = { namespace: normalizeNamespace(at, "memory.tools.namespace", raw.tools.namespace) };
    } else fail(at, "memory.tools", "must be a boolean or { namespace }");
  }
  return out;
}

/** Validates a whole config. Idempotent on its own output. */
export function normalizeConfig(raw: unknown, where: string): CapstanConfig {
  if (!isRecord(raw))
    fail(where, "", `the config must be an object like { agents: [...] } (got ${describe(raw)})`);
  refuseUnknownKeys(raw, CONFIG_KEYS, where);
  const { agents, models, server } = raw;
  if (!Array.isArray(agents)) {
    fail(where, "agents", `must be an array of defineAgent({...}) results (got ${describe(agents)})`);
  }
  const seen = new Set<string>();
  const outAgents = agents.map((a: unknown, i) => {
    const agent = normalizeAgent(a, `${where} agents[${i}]`);
    if (seen.has(agent.name)) {
      fail(where, `agents[${i}].name`, `duplicate agent name "${agent.name}": agent names must be unique`);
    }
    seen.add(agent.name);
    return agent;
  });

  const config: CapstanConfig = { agents: outAgents };
  if (models !== undefined) {
    const parsed = modelSettingsSchema.safeParse(models);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const path = ["models", ...(issue?.path ?? []).map(String)].join(".");
      if (issue?.code === "unrecognized_keys") {
        const key = issue.keys[0] ?? "";
        const message = unknownKeyMessage(key, keysAt(modelSettingsSchema, issue.path) ?? [], `${path}.`);
        throw new CapstanError("config_invalid", `${where}: ${message}`, {
          fields: [{ field: `${path}.${key}`, message }],
        });
      }
      fail(where, path, issue?.message ?? "invalid model settings");
    }
    // Keep the caller's object (not zod's copy): `registerScript` may add to it later.
    config.models = models as ModelProviderSettings;
  }
  if (server !== undefined) {
    if (!isRecord(server)) fail(where, "server", `must be an object (got ${describe(server)})`);
    // Values are validated with the environment and flags at start; a misspelled name never becomes valid.
    const unknown = unknownSettingKeys(server)[0];
    if (unknown) {
      throw new CapstanError("config_invalid", `${where}: ${unknown.message}`, { fields: [unknown] });
    }
    config.server = server;
  }
  return config;
}

/* ------------------------------------------------------------------------- */

/**
 * A stable short hash (16 hex chars) of what determines an agent's behaviour
 * towards the model: name, model label, instructions, and each tool's name,
 * description, input JSON schema and effect. Used to version caches (docs/agent-sdk.md#caches):
 * change any of these and cached responses of the old version stop matching.
 * Independent of object key order and of the order tools are listed in.
 */
export function agentVersion(agent: AgentDefinition): string {
  // Definitions are built once at load and not mutated: hash each once (the LLM cache asks per call).
  let v = versions.get(agent);
  if (v === undefined) {
    v = computeAgentVersion(agent);
    versions.set(agent, v);
  }
  return v;
}

const versions = new WeakMap<AgentDefinition, string>();

function computeAgentVersion(agent: AgentDefinition): string {
  const tools = Object.keys(agent.tools)
    .sort()
    .map((name) => {
      const t = agent.tools[name];
      if (t === undefined) return [name];
      return [name, t.description, toolInputJsonSchema(t.input), t.effect];
    });
  const material = canonicalJson([
    "capstan-agent-v1",
    agent.name,
    modelLabel(agent.model),
    agent.instructions,
    tools,
  ]);
  return createHash("sha256").update(material).digest("hex").slice(0, 16);
}
