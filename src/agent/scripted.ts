/**
 * A deterministic *scripted* language model: no network, no randomness. It
 * implements the AI SDK provider interface (LanguageModelV3) so the whole
 * stack (streamText, the worker loop, journaling, SSE) runs unchanged against
 * it in tests, benchmarks and the built-in demo. It is not an LLM and never
 * pretends to be one: its provider id is `scripted`.
 *
 * Contract: the output of a call is a pure function of (prompt, offered tools,
 * script). The same prompt gives the same text, tool calls, tool-call ids and
 * token usage, which is what replay-after-crash tests need.
 */
import { createHash } from "node:crypto";
import type {
  LanguageModelV3,
  LanguageModelV3CallOptions,
  LanguageModelV3Content,
  LanguageModelV3FinishReason,
  LanguageModelV3FunctionTool,
  LanguageModelV3GenerateResult,
  LanguageModelV3Message,
  LanguageModelV3Prompt,
  LanguageModelV3StreamPart,
  LanguageModelV3StreamResult,
  LanguageModelV3ToolResultOutput,
  LanguageModelV3Usage,
} from "@ai-sdk/provider";
import { abortableSleep } from "../abort.js";

/** A function tool as offered to the model in one call. */
export interface ScriptTool {
  name: string;
  description: string | undefined;
  /** JSON schema of the tool input (what a real model would see). */
  inputSchema: unknown;
}

/** What a script sees for one model call. */
export interface ScriptCallInfo {
  /** The full prompt of this call (system, user, assistant and tool messages). */
  messages: LanguageModelV3Prompt;
  /**
   * Index of this call within the current turn of the conversation: 0 for the
   * first call after the latest user message, +1 for every assistant message
   * since. Derived from the prompt alone, so a replayed call sees the same step.
   */
  step: number;
  /** Function tools offered in this call, in the order the caller gave them. */
  tools: ScriptTool[];
}

export interface ScriptedToolCall {
  toolName: string;
  /** Tool arguments; sent to the caller JSON-encoded. */
  input: Record<string, unknown>;
}

/** One model answer: either text, or one or more tool calls (optionally preceded by text). */
export type ScriptedTurn = { text: string } | { toolCalls: ScriptedToolCall[]; text?: string };

/**
 * Decides the answer of one call. Must be deterministic (a function of its
 * argument only). It may throw (for example an `APICallError` from
 * `@ai-sdk/provider` with status 429) to simulate a failing provider call.
 */
export type Script = (info: ScriptCallInfo) => ScriptedTurn;

export interface ScriptedModelOptions {
  /** Reported as the model id (default `"script"`). */
  modelId?: string;
  /** Delay before the answer starts (ms); honours `abortSignal`. Simulates a slow model. */
  delayMs?: number;
  /** Delay between streamed deltas (ms); honours `abortSignal`. Lets tests cut a stream mid-way. */
  chunkDelayMs?: number;
}

/** Built-in scripts, available as `scripted:echo` and `scripted:tools`. Immutable. */
export const builtinScripts: Readonly<Record<string, Script>> = Object.freeze({
  echo: echoScript,
  tools: toolsScript,
});

/** Creates a scripted LanguageModelV3 that answers with `script`. */
export function createScriptedModel(script: Script, opts: ScriptedModelOptions = {}): LanguageModelV3 {
  const modelId = opts.modelId ?? "script";
  const delayMs = opts.delayMs ?? 0;
  const chunkDelayMs = opts.chunkDelayMs ?? 0;

  const answer = async (options: LanguageModelV3CallOptions): Promise<Answer> => {
    await pause(delayMs, options.abortSignal);
    return computeAnswer(script, options);
  };

  return {
    specificationVersion: "v3",
    provider: "scripted",
    modelId,
    supportedUrls: {},

    async doGenerate(options: LanguageModelV3CallOptions): Promise<LanguageModelV3GenerateResult> {
      const a = await answer(options);
      const content: LanguageModelV3Content[] = [];
      if (a.text.length > 0) content.push({ type: "text", text: a.text });
      for (const c of a.toolCalls) {
        content.push({ type: "tool-call", toolCallId: c.toolCallId, toolName: c.toolName, input: c.input });
      }
      return {
        content,
        finishReason: a.finishReason,
        usage: a.usage,
        response: { id: a.responseId, modelId },
        warnings: [],
      };
    },

    async doStream(options: LanguageModelV3CallOptions): Promise<LanguageModelV3StreamResult> {
      const a = await answer(options);
      const parts = streamParts(a, modelId);
      const signal = options.abortSignal;
      let i = 0;
      const stream = new ReadableStream<LanguageModelV3StreamPart>({
        async pull(controller) {
          signal?.throwIfAborted();
          const part = parts[i];
          if (part === undefined) {
            controller.close();
            return;
          }
          // Pause only before content deltas: metadata and ends are not "tokens".
          if (i > 0 && (part.type === "text-delta" || part.type === "tool-input-delta")) {
            await pause(chunkDelayMs, signal);
          }
          i++;
          controller.enqueue(part);
        },
      });
      return { stream };
    },
  };
}

/* ------------------------------------------------------------------------- */

interface Answer {
  responseId: string;
  text: string;
  toolCalls: Array<{ toolCallId: string; toolName: string; input: string }>;
  finishReason: LanguageModelV3FinishReason;
  usage: LanguageModelV3Usage;
}

function computeAnswer(script: Script, options: LanguageModelV3CallOptions): Answer {
  const tools: ScriptTool[] = (options.tools ?? [])
    .filter((t): t is LanguageModelV3FunctionTool => t.type === "function")
    .map((t) => ({ name: t.name, description: t.description, inputSchema: t.inputSchema }));
  const prompt = options.prompt;
  const turn = script({ messages: prompt, step: stepOf(prompt), tools });

  const promptKey = promptText(prompt) + "\u0000" + JSON.stringify(tools);
  const digest = sha256(promptKey);
  const text = turn.text ?? "";
  const toolCalls =
    "toolCalls" in turn
      ? turn.toolCalls.map((c, idx) => ({
          // Unique across the conversation because the prompt grows every step.
          toolCallId: `call_${digest.slice(0, 12)}_${idx}`,
          toolName: c.toolName,
          input: JSON.stringify(c.input),
        }))
      : [];
  if ("toolCalls" in turn && toolCalls.length === 0) {
    throw new Error("scripted model: a script returned `toolCalls: []`; return text or at least one call");
  }

  const outputChars = text.length + toolCalls.reduce((n, c) => n + c.toolName.length + c.input.length, 0);
  const inputTokens = tokensFor(promptKey.length);
  const outputTokens = tokensFor(outputChars);
  return {
    responseId: `scripted-${digest.slice(0, 16)}`,
    text,
    toolCalls,
    finishReason:
      toolCalls.length > 0 ? { unified: "tool-calls", raw: "tool_calls" } : { unified: "stop", raw: "stop" },
    usage: {
      inputTokens: { total: inputTokens, noCache: inputTokens, cacheRead: 0, cacheWrite: 0 },
      outputTokens: { total: outputTokens, text: outputTokens, reasoning: 0 },
    },
  };
}

function streamParts(a: Answer, modelId: string): LanguageModelV3StreamPart[] {
  const parts: LanguageModelV3StreamPart[] = [
    { type: "stream-start", warnings: [] },
    { type: "response-metadata", id: a.responseId, modelId },
  ];
  if (a.text.length > 0) {
    parts.push({ type: "text-start", id: "text-0" });
    for (const delta of splitText(a.text)) parts.push({ type: "text-delta", id: "text-0", delta });
    parts.push({ type: "text-end", id: "text-0" });
  }
  for (const c of a.toolCalls) {
    parts.push({ type: "tool-input-start", id: c.toolCallId, toolName: c.toolName });
    for (const delta of splitInHalves(c.input))
      parts.push({ type: "tool-input-delta", id: c.toolCallId, delta });
    parts.push({ type: "tool-input-end", id: c.toolCallId });
    parts.push({ type: "tool-call", toolCallId: c.toolCallId, toolName: c.toolName, input: c.input });
  }
  parts.push({ type: "finish", usage: a.usage, finishReason: a.finishReason });
  return parts;
}

/** Word-sized deltas (whitespace kept with the preceding word), so the text streams in several pieces. */
function splitText(text: string): string[] {
  return text.match(/\S+\s*|\s+/g) ?? [text];
}

function splitInHalves(s: string): string[] {
  if (s.length < 2) return [s];
  const mid = Math.floor(s.length / 2);
  return [s.slice(0, mid), s.slice(mid)];
}

/** Roughly 4 characters per token, at least 1: deterministic, provider-like magnitudes. */
function tokensFor(chars: number): number {
  return Math.max(1, Math.ceil(chars / 4));
}

function sha256(s: string): string {
  return createHash("sha256").update(s).digest("hex");
}

/** Assistant messages after the latest user message. */
function stepOf(prompt: LanguageModelV3Prompt): number {
  let step = 0;
  for (let i = prompt.length - 1; i >= 0; i--) {
    const m = prompt[i];
    if (m === undefined || m.role === "user") break;
    if (m.role === "assistant") step++;
  }
  return step;
}

/** A canonical text rendering of the prompt (text, tool calls, tool results, file names). */
function promptText(prompt: LanguageModelV3Prompt): string {
  return prompt.map((m) => `${m.role}: ${messageText(m)}`).join("\n");
}

function messageText(m: LanguageModelV3Message): string {
  if (m.role === "system") return m.content;
  const out: string[] = [];
  for (const p of m.content) {
    switch (p.type) {
      case "text":
      case "reasoning":
        out.push(p.text);
        break;
      case "file":
        out.push(`[file ${p.filename ?? ""} ${p.mediaType}]`);
        break;
      case "tool-call":
        out.push(`[call ${p.toolName} ${JSON.stringify(p.input)}]`);
        break;
      case "tool-result":
        out.push(`[result ${p.toolName} ${toolOutputText(p.output)}]`);
        break;
      case "tool-approval-response":
        out.push(`[approval ${p.approvalId} ${String(p.approved)}]`);
        break;
    }
  }
  return out.join(" ");
}

/** Text of a tool result as a model would read it. */
export function toolOutputText(output: LanguageModelV3ToolResultOutput): string {
  switch (output.type) {
    case "text":
    case "error-text":
      return output.value;
    case "json":
    case "error-json":
      return JSON.stringify(output.value);
    case "execution-denied":
      return output.reason === undefined ? "denied" : `denied: ${output.reason}`;
    case "content":
      return output.value.map((v) => (v.type === "text" ? v.text : `[${v.type}]`)).join(" ");
  }
}

/** Waits `ms`, ended by the signal; at 0 (the default delays) it answers without a timer. */
async function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  signal?.throwIfAborted();
  if (ms > 0) await abortableSleep(ms, signal);
}

/* ---------------------------- built-in scripts ---------------------------- */

function lastUserText(messages: LanguageModelV3Prompt): string {
  for (let i = messages.length - 1; i >= 0; i--) {
    const m = messages[i];
    if (m?.role === "user") return userText(m);
  }
  return "";
}

function userText(m: Extract<LanguageModelV3Message, { role: "user" }>): string {
  return m.content
    .filter((p) => p.type === "text")
    .map((p) => p.text)
    .join("\n");
}

/** `scripted:echo`: answers "You said: <last user text>". */
function echoScript({ messages }: ScriptCallInfo): ScriptedTurn {
  return { text: `You said: ${lastUserText(messages)}` };
}

/**
 * `scripted:tools`: after a user message that names a tool (as a whole word),
 * calls that tool (the first offered tool named) with the arguments of the
 * first `{...}` JSON object in the message (or `{}`); after tool results,
 * answers with a summary of them. Otherwise behaves like `echo`.
 */
function toolsScript(info: ScriptCallInfo): ScriptedTurn {
  const last = info.messages.at(-1);
  if (last?.role === "user" && info.tools.length > 0) {
    const text = userText(last);
    const chosen = info.tools.find((t) => mentions(text, t.name));
    if (chosen !== undefined) return { toolCalls: [{ toolName: chosen.name, input: jsonObjectIn(text) }] };
  }
  if (last?.role === "tool") {
    const results = last.content.flatMap((p) =>
      p.type === "tool-result" ? [`${p.toolName}: ${toolOutputText(p.output)}`] : [],
    );
    return { text: `Tool results: ${results.join("; ")}` };
  }
  return echoScript(info);
}

function mentions(text: string, name: string): boolean {
  const escaped = name.replace(/[.*+?^${}()|[\]\\-]/g, "\\$&");
  return new RegExp(`(^|[^A-Za-z0-9_-])${escaped}($|[^A-Za-z0-9_-])`).test(text);
}

/** The JSON object spanning the first `{` to the last `}` of `text`, or `{}` if there is none. */
function jsonObjectIn(text: string): Record<string, unknown> {
  const start = text.indexOf("{");
  const end = text.lastIndexOf("}");
  if (start < 0 || end <= start) return {};
  try {
    const v: unknown = JSON.parse(text.slice(start, end + 1));
    return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}
