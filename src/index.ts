/**
 * The package entry (`import { defineConfig, defineAgent, tool } from "capstan"`):
 * what a `capstan.config.ts` needs. Kept small on purpose; server internals
 * are not part of it.
 */
export { defineAgent, defineConfig, tool } from "./agent/define.js";
export type { AgentOptions, ConfigOptions, ToolOptions } from "./agent/define.js";
export type {
  AgentDefinition,
  AgentLimits,
  CapstanConfig,
  Effect,
  ModelProviderSettings,
  ModelSpec,
  ToolContext,
  ToolDefinition,
} from "./agent/types.js";
export type { Script, ScriptCallInfo, ScriptedToolCall, ScriptedTurn } from "./agent/scripted.js";
