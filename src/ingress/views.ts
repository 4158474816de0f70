/** State objects → the snake_case wire shapes of docs/http-api.md (see ./schemas.ts). */
import type { Memory, MemoryMatch } from "../state/memories.js";
import type { Thread } from "../state/threads.js";
import type { Message, Run, Step } from "../state/types.js";
import type * as wire from "../client/types.js";
import type {
  MemoryJson,
  MemoryMatchJson,
  MessageJson,
  MessagePageJson,
  ProblemJson,
  RunJson,
  StepJson,
  ThreadJson,
} from "./schemas.js";

const iso = (d: Date): string => d.toISOString();
const isoOrNull = (d: Date | null): string | null => (d ? d.toISOString() : null);

export function threadView(t: Thread): ThreadJson {
  return { id: t.id, status: t.status, metadata: t.metadata, created_at: iso(t.createdAt) };
}

/**
 * A run as JSON. `estimatedCost` (see `runCost` in src/cost/pricing.ts) is
 * given when a price table is configured: every run answer (create, get,
 * wait, cancel, resume).
 */
export function runView(r: Run, estimatedCost?: number | null): RunJson {
  return {
    id: r.id,
    thread_id: r.threadId,
    agent: r.agent,
    status: r.status,
    multitask: r.multitask,
    metadata: r.metadata,
    attempts: r.attempts,
    usage: {
      input_tokens: r.usage.inputTokens,
      output_tokens: r.usage.outputTokens,
      cached_input_tokens: r.usage.cachedInputTokens,
      ...(estimatedCost !== undefined ? { estimated_cost: estimatedCost } : {}),
    },
    error: r.error,
    wait: r.wait,
    created_at: iso(r.createdAt),
    started_at: isoOrNull(r.startedAt),
    finished_at: isoOrNull(r.finishedAt),
  };
}

export function messageView(m: Message): MessageJson {
  return { seq: m.seq, role: m.role, content: m.content, run_id: m.runId, created_at: iso(m.createdAt) };
}

export function stepView(s: Step): StepJson {
  return {
    step_no: s.stepNo,
    kind: s.kind,
    status: s.status,
    tool_name: s.toolName,
    tool_call_id: s.toolCallId,
    effect: s.effect,
    args: s.input,
    result: s.output,
    error: s.error,
    usage:
      s.kind === "llm"
        ? {
            input_tokens: s.inputTokens ?? 0,
            output_tokens: s.outputTokens ?? 0,
            cached_input_tokens: s.cachedInputTokens,
          }
        : null,
    ...stepCache(s),
    started_at: iso(s.startedAt),
    finished_at: isoOrNull(s.finishedAt),
  };
}

/**
 * The model and cache outcome of a step. LLM steps: from the journaled
 * request summary (src/state/journal.ts `appendLlmStep` records `model`,
 * `cache` and `tokens_saved` there); steps journaled before those were
 * recorded show model null and no hit. Tool steps: `steps.cache_hit`, set
 * for cacheable tools only.
 */
function stepCache(s: Step): Pick<StepJson, "model" | "cache"> {
  if (s.kind !== "llm") {
    // Tool steps: only cacheable (pure, cache-configured) tools have an outcome here.
    return { model: null, cache: s.cacheHit === null ? null : { hit: s.cacheHit, tokens_saved: 0 } };
  }
  const req = typeof s.input === "object" && s.input !== null ? (s.input as Record<string, unknown>) : {};
  const hit = req.cache === "hit";
  const saved = typeof req.tokens_saved === "number" && hit ? req.tokens_saved : 0;
  return { model: typeof req.model === "string" ? req.model : null, cache: { hit, tokens_saved: saved } };
}

export function memoryView(m: Memory): MemoryJson {
  return {
    id: m.id,
    namespace: m.namespace,
    key: m.key,
    text: m.text,
    metadata: m.metadata,
    embedding_model: m.embeddingModel,
    created_at: iso(m.createdAt),
    updated_at: iso(m.updatedAt),
    expires_at: isoOrNull(m.expiresAt),
  };
}

export function memoryMatchView({ memory: m, distance }: MemoryMatch): MemoryMatchJson {
  return {
    id: m.id,
    namespace: m.namespace,
    key: m.key,
    text: m.text,
    metadata: m.metadata,
    distance,
    created_at: iso(m.createdAt),
    expires_at: isoOrNull(m.expiresAt),
  };
}

// Compile-time guard: the schemas (hence /openapi.json) and the typed client's
// wire types must describe the same JSON. A mismatch fails `tsc`.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const _wireTypesAgree: [
  Same<ThreadJson, wire.Thread>,
  Same<RunJson, wire.Run>,
  Same<MessageJson, wire.Message>,
  Same<MessagePageJson, wire.MessagePage>,
  Same<StepJson, wire.Step>,
  Same<Required<ProblemJson>, Required<Pick<wire.Problem, keyof ProblemJson>>>,
] = [true, true, true, true, true, true];
