/**
 * Token estimates of an LLM call before it is made, for budget reservations
 * (src/cost/budget.ts) and provider token windows (src/cost/provider-limits.ts).
 *
 * Two numbers, because they serve different purposes:
 * - `likely`: ceil(prompt characters / 4) + the output cap — about what
 *   English text costs with today's tokenizers;
 * - `max`: an upper bound — the prompt's UTF-8 bytes (byte-level BPE
 *   tokenizers, as used by OpenAI, Anthropic and Llama 3, emit at most one
 *   token per byte), plus per-message and per-tool overheads for the framing
 *   providers add, plus the output cap.
 * Both include the output cap, so they hold only if the call really passes
 * `maxOutputTokens` to the provider (the agent's, or DEFAULT_MAX_OUTPUT_TOKENS).
 */
import type { z } from "zod";
import { toolInputSchemaText } from "../agent/tool-schema.js";

export const DEFAULT_MAX_OUTPUT_TOKENS = 4_096;

/** Framing tokens per message (role markers, separators); generous. */
const PER_MESSAGE_MAX = 16;
const PER_MESSAGE_LIKELY = 4;
/** Per tool (function wrapper) and once for hidden tool-use system prompts (Anthropic's is ~350). */
const PER_TOOL_MAX = 64;
const TOOLS_BASE_MAX = 1_024;
/** Request framing independent of content. */
const BASE_MAX = 256;

export interface TokenEstimate {
  /** A realistic estimate (prompt chars / 4 + output cap). */
  likely: number;
  /** An upper bound (prompt UTF-8 bytes + overheads + output cap); ≥ likely. */
  max: number;
  /** The output cap both assume: pass it to the model call as `maxOutputTokens`. */
  maxOutputTokens: number;
}

/** What tools contribute: name, description and input schema (as the model receives them). */
export interface EstimableTool {
  description: string;
  input: z.ZodType;
}

function describeTool(name: string, t: EstimableTool): string {
  return `${name}\n${t.description}\n${toolInputSchemaText(t.input)}`;
}

export interface EstimateInput {
  /** System prompt (the agent's instructions). */
  system?: string;
  /** The conversation as sent (AI SDK ModelMessages, or anything JSON). */
  messages: readonly unknown[];
  tools?: Readonly<Record<string, EstimableTool>>;
  /** The agent's `maxOutputTokens`; default `defaultMaxOutputTokens`. */
  maxOutputTokens?: number;
  defaultMaxOutputTokens?: number;
}

/** Estimate one LLM call's tokens (input + output). Pure and cheap (tool schemas are measured once). */
export function estimateLlmTokens(input: EstimateInput): TokenEstimate {
  const maxOut = Math.max(
    1,
    Math.ceil(input.maxOutputTokens ?? input.defaultMaxOutputTokens ?? DEFAULT_MAX_OUTPUT_TOKENS),
  );
  const parts = [input.system ?? "", JSON.stringify(input.messages) ?? ""];
  const tools = Object.entries(input.tools ?? {});
  for (const [name, t] of tools) parts.push(describeTool(name, t));
  const text = parts.join("\n");
  const chars = text.length;
  const bytes = Buffer.byteLength(text, "utf8");
  const n = input.messages.length + (input.system ? 1 : 0);
  const likely = Math.ceil(chars / 4) + n * PER_MESSAGE_LIKELY + maxOut;
  const max =
    bytes +
    n * PER_MESSAGE_MAX +
    (tools.length > 0 ? TOOLS_BASE_MAX + tools.length * PER_TOOL_MAX : 0) +
    BASE_MAX +
    maxOut;
  return { likely, max: Math.max(max, likely), maxOutputTokens: maxOut };
}

/** A plain token count as an estimate (likely = max = tokens). */
export function exactEstimate(tokens: number): TokenEstimate {
  const t = Math.max(0, Math.ceil(tokens));
  return { likely: t, max: t, maxOutputTokens: 0 };
}
