import type { ModelMessage } from "ai";
import type { Message, Step } from "../state/types.js";

/** What the journal stores for an LLM step. */
export interface LlmResponse {
  text: string;
  toolCalls: { toolCallId: string; toolName: string; input: unknown }[];
  finishReason: string;
}

/** What the journal stores as a tool step's outcome, and what the model sees. */
export type ToolOutcome = { ok: true; value: unknown } | { ok: false; error: string };

/** Thread history (as stored) → model messages. Content is stored in AI SDK message shape. */
export function historyToModelMessages(history: Message[]): ModelMessage[] {
  return history
    .filter((m) => m.role !== "system")
    .map((m) => ({ role: m.role, content: m.content }) as ModelMessage);
}

export function assistantMessage(r: LlmResponse): ModelMessage {
  const parts: (
    | { type: "text"; text: string }
    | { type: "tool-call"; toolCallId: string; toolName: string; input: unknown }
  )[] = [];
  if (r.text) parts.push({ type: "text", text: r.text });
  for (const c of r.toolCalls)
    parts.push({ type: "tool-call", toolCallId: c.toolCallId, toolName: c.toolName, input: c.input });
  return { role: "assistant", content: parts };
}

export function toolMessage(
  results: { toolCallId: string; toolName: string; outcome: ToolOutcome }[],
): ModelMessage {
  return {
    role: "tool",
    content: results.map((r) => ({
      type: "tool-result" as const,
      toolCallId: r.toolCallId,
      toolName: r.toolName,
      output: r.outcome.ok
        ? { type: "json" as const, value: (r.outcome.value ?? null) as never }
        : { type: "error-text" as const, value: r.outcome.error },
    })),
  };
}

/** The outcome recorded in a finished tool step, as the model will see it. */
export function outcomeOfStep(step: Step): ToolOutcome {
  if (step.status === "completed") return { ok: true, value: step.output };
  return { ok: false, error: step.error?.message ?? "tool failed" };
}
