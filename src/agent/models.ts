/**
 * Model resolution: `provider:model` strings (docs/agent-sdk.md#models) to AI SDK language
 * models, and agent tools to the tool schemas a model sees.
 *
 * `resolveModel` is cheap and pure: a provider's SDK is imported on the
 * model's first call, so a process loads only the providers it uses (each
 * costs start-up time, and a worker's cold start bounds recovery). Callers
 * may resolve once per agent and reuse the instance.
 */
import type { LanguageModelV2, LanguageModelV3 } from "@ai-sdk/provider";
import { tool as aiTool, zodSchema, type ToolSet } from "ai";
import { CapstanError } from "../errors.js";
import { builtinScripts, createScriptedModel, type Script } from "./scripted.js";
import type { AgentDefinition, ModelProviderSettings, ModelSpec } from "./types.js";

/** Providers accepted in `provider:model` strings. */
export const MODEL_PROVIDERS = ["openai", "anthropic", "compatible", "scripted"] as const;
export type ModelProvider = (typeof MODEL_PROVIDERS)[number];

/**
 * A resolved model instance, accepted by `streamText`/`generateText`. Our own
 * providers always produce LanguageModelV3; a user-supplied V2 instance is
 * passed through as is (the AI SDK adapts it).
 */
export type ResolvedModel = LanguageModelV3 | LanguageModelV2;

/**
 * Splits `provider:model`. Throws `config_invalid` naming the valid providers
 * if the provider is unknown or the model part is empty.
 */
export function parseModelSpec(spec: string): { provider: ModelProvider; modelId: string } {
  const colon = spec.indexOf(":");
  const provider = colon < 0 ? "" : spec.slice(0, colon);
  const modelId = colon < 0 ? "" : spec.slice(colon + 1);
  if (!isProvider(provider) || modelId.trim() === "") {
    throw new CapstanError(
      "config_invalid",
      `invalid model "${spec}": expected "<provider>:<model>" with provider one of ` +
        `${MODEL_PROVIDERS.map((p) => `"${p}"`).join(", ")} (e.g. "openai:gpt-4o-mini", ` +
        `"compatible:llama3.1", "scripted:echo"), or an AI SDK language-model instance`,
    );
  }
  return { provider, modelId };
}

function isProvider(s: string): s is ModelProvider {
  return (MODEL_PROVIDERS as readonly string[]).includes(s);
}

/** True for an AI SDK language-model instance (spec v2 or v3). */
export function isLanguageModelInstance(v: unknown): v is ResolvedModel {
  if (typeof v !== "object" || v === null) return false;
  const m = v as Record<string, unknown>;
  return (
    (m.specificationVersion === "v3" || m.specificationVersion === "v2") &&
    typeof m.provider === "string" &&
    typeof m.modelId === "string" &&
    typeof m.doStream === "function" &&
    typeof m.doGenerate === "function"
  );
}

/** A stable label of a model spec: the string itself, or `provider:modelId` of an instance. */
export function modelLabel(spec: ModelSpec): string {
  if (typeof spec === "string") return spec;
  return `${spec.provider}:${spec.modelId}`;
}

/**
 * A provider's model whose SDK is imported on the first call. `provider` is
 * the string the real model reports (models.test.ts checks it against the SDK).
 */
function lazyModel(provider: string, modelId: string, load: () => Promise<LanguageModelV3>): LanguageModelV3 {
  let model: Promise<LanguageModelV3> | undefined;
  const get = (): Promise<LanguageModelV3> =>
    (model ??= load().catch((err: unknown) => {
      model = undefined; // a failed import is retried on the next call
      throw err;
    }));
  return {
    specificationVersion: "v3",
    provider,
    modelId,
    get supportedUrls() {
      return get().then((m) => m.supportedUrls);
    },
    doGenerate: async (options) => (await get()).doGenerate(options),
    doStream: async (options) => (await get()).doStream(options),
  };
}

/**
 * Resolves a model spec to an AI SDK model instance.
 *
 * - `openai:<model>`: OpenAI (Responses API); key/base URL from `providers.openai`.
 * - `anthropic:<model>`: Anthropic; key/base URL from `providers.anthropic`.
 *   (When no key is configured, these SDKs fall back to `OPENAI_API_KEY` /
 *   `ANTHROPIC_API_KEY` at call time.)
 * - `compatible:<model>`: any OpenAI-compatible chat-completions server at
 *   `providers.compatible.baseURL` (required). Streaming usage is requested
 *   (`stream_options.include_usage`) because token accounting depends on it.
 * - `scripted:<name>`: the deterministic scripted model with the script
 *   `providers.scripts[name]` or a built-in (`echo`, `tools`).
 * - an instance: returned unchanged.
 *
 * Throws `config_invalid` with what to fix.
 */
export function resolveModel(spec: ModelSpec, providers: ModelProviderSettings = {}): ResolvedModel {
  if (typeof spec !== "string") {
    if (!isLanguageModelInstance(spec)) {
      throw new CapstanError(
        "config_invalid",
        "model must be a \"provider:model\" string or an AI SDK language-model instance (specificationVersion 'v2' or 'v3')",
      );
    }
    return spec;
  }
  const { provider, modelId } = parseModelSpec(spec);
  switch (provider) {
    case "openai": {
      const s = providers.openai ?? {};
      return lazyModel("openai.responses", modelId, async () => {
        const { createOpenAI } = await import("@ai-sdk/openai");
        return createOpenAI({ apiKey: s.apiKey, baseURL: s.baseURL })(modelId);
      });
    }
    case "anthropic": {
      const s = providers.anthropic ?? {};
      return lazyModel("anthropic.messages", modelId, async () => {
        const { createAnthropic } = await import("@ai-sdk/anthropic");
        return createAnthropic({ apiKey: s.apiKey, baseURL: s.baseURL })(modelId);
      });
    }
    case "compatible": {
      const s = providers.compatible ?? {};
      if (s.baseURL === undefined || s.baseURL.trim() === "") {
        throw new CapstanError(
          "config_invalid",
          `model "${spec}" needs the base URL of an OpenAI-compatible server: set models.compatible.baseURL ` +
            `in the config file (e.g. "http://127.0.0.1:11434/v1" for Ollama)`,
        );
      }
      const name = s.name ?? "compatible";
      const baseURL = s.baseURL;
      return lazyModel(`${name}.chat`, modelId, async () => {
        const { createOpenAICompatible } = await import("@ai-sdk/openai-compatible");
        return createOpenAICompatible({
          name,
          baseURL,
          apiKey: s.apiKey,
          headers: s.headers,
          includeUsage: true,
        }).chatModel(modelId);
      });
    }
    case "scripted": {
      const script = providers.scripts?.[modelId] ?? builtinScripts[modelId];
      if (script === undefined) {
        const known = [...new Set([...Object.keys(builtinScripts), ...Object.keys(providers.scripts ?? {})])];
        throw new CapstanError(
          "config_invalid",
          `model "${spec}": no script named "${modelId}"; known scripts: ${known.map((k) => `"${k}"`).join(", ")} ` +
            `(add one with registerScript(settings, name, fn) or models.scripts in the config file)`,
        );
      }
      return createScriptedModel(script, { modelId });
    }
  }
}

const SCRIPT_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

/**
 * Adds a script for `scripted:<name>` to `settings.scripts` (created if absent)
 * and returns `settings`. Refuses invalid names and registering a name twice;
 * a registered script shadows a built-in of the same name.
 */
export function registerScript(
  settings: ModelProviderSettings,
  name: string,
  script: Script,
): ModelProviderSettings {
  if (!SCRIPT_NAME.test(name)) {
    throw new CapstanError(
      "config_invalid",
      `script name "${name}" is invalid: use letters, digits, "_", "-" or "." (at most 64)`,
    );
  }
  if (typeof script !== "function") {
    throw new CapstanError("config_invalid", `script "${name}" must be a function (info) => turn`);
  }
  settings.scripts ??= {};
  if (Object.hasOwn(settings.scripts, name)) {
    throw new CapstanError("config_invalid", `script "${name}" is already registered`);
  }
  settings.scripts[name] = script;
  return settings;
}

/**
 * The `tools` object for `streamText`/`generateText`: name, description and
 * JSON schema of each tool's input, and NO execute function. The model sees
 * the tools; the AI SDK validates the arguments the model produces against the
 * zod schema; execution stays with the worker, which journals it (docs/architecture.md#tools-and-effects).
 */
export function toolSchemas(agent: AgentDefinition): ToolSet {
  const out: ToolSet = {};
  for (const [name, def] of Object.entries(agent.tools)) {
    out[name] = aiTool({ description: def.description, inputSchema: zodSchema(def.input) });
  }
  return out;
}
