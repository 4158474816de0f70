/**
 * The agent SDK: defining agents and tools, resolving models, loading the
 * config file, and the deterministic scripted model for tests and demos.
 */
export {
  AGENT_NAME,
  DEFAULT_LIMITS,
  DEFAULT_TOOL_TIMEOUT_MS,
  EFFECTS,
  TOOL_NAME,
  agentVersion,
  defineAgent,
  defineConfig,
  isZodObject,
  normalizeAgent,
  normalizeConfig,
  normalizeTool,
  tool,
} from "./define.js";
export type { AgentOptions, ConfigOptions, ToolOptions, ZodObjectSchema } from "./define.js";
export {
  MODEL_PROVIDERS,
  isLanguageModelInstance,
  modelLabel,
  parseModelSpec,
  registerScript,
  resolveModel,
  toolSchemas,
} from "./models.js";
export type { ModelProvider, ResolvedModel } from "./models.js";
export { builtinScripts, createScriptedModel, toolOutputText } from "./scripted.js";
export type {
  Script,
  ScriptCallInfo,
  ScriptTool,
  ScriptedModelOptions,
  ScriptedToolCall,
  ScriptedTurn,
} from "./scripted.js";
export { CONFIG_FILE_NAMES, findConfigFile, loadConfigFile } from "./loader.js";
export type {
  AgentDefinition,
  AgentLimits,
  CapstanConfig,
  Effect,
  ModelProviderSettings,
  ModelSpec,
  ToolContext,
  ToolDefinition,
} from "./types.js";
