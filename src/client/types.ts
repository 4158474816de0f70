/**
 * Wire types of the Capstan HTTP API (docs/http-api.md), snake_case as sent. Kept
 * free of dependencies so `capstan/client` runs anywhere `fetch` does; the
 * ingress checks at compile time that its schemas produce exactly these.
 */

export type ThreadStatus = "idle" | "busy" | "waiting";
export type RunStatus = "queued" | "running" | "waiting" | "succeeded" | "failed" | "cancelled";
export type Multitask = "enqueue" | "reject" | "interrupt";

export interface Thread {
  id: string;
  status: ThreadStatus;
  metadata: Record<string, unknown>;
  created_at: string;
}

export interface RunError {
  code: string;
  message: string;
  [k: string]: unknown;
}

export interface Run {
  id: string;
  thread_id: string;
  agent: string;
  status: RunStatus;
  multitask: Multitask;
  metadata: Record<string, unknown>;
  attempts: number;
  usage: {
    input_tokens: number;
    output_tokens: number;
    /** Input tokens the provider served from its prompt cache (a subset of input_tokens). */
    cached_input_tokens: number;
    /** Under the server's price table (every run answer); null when a model has no price. */
    estimated_cost?: number | null | undefined;
  };
  error: RunError | null;
  wait: Record<string, unknown> | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

export interface Message {
  seq: number;
  role: "user" | "assistant" | "tool" | "system";
  content: unknown;
  run_id: string | null;
  created_at: string;
}

export interface MessagePage {
  data: Message[];
  /** Pass as `after` for the next page; null when this page was not full. */
  next_after: number | null;
}

export interface Step {
  step_no: number;
  kind: "llm" | "tool";
  status: "started" | "completed" | "failed";
  tool_name: string | null;
  tool_call_id: string | null;
  effect: "pure" | "idempotent" | "side-effect" | null;
  args: unknown;
  result: unknown;
  error: RunError | null;
  usage: { input_tokens: number; output_tokens: number; cached_input_tokens: number | null } | null;
  /** `provider:model` of an LLM step; null for tools. */
  model: string | null;
  /** LLM steps: whether the response cache answered, and the tokens that saved; null for tools. */
  cache: { hit: boolean; tokens_saved: number } | null;
  started_at: string;
  finished_at: string | null;
}

export interface StepList {
  data: Step[];
}

export interface TextPart {
  type: "text";
  text: string;
}

/** A user message: a string, or `{role: "user", content}`. */
export type RunInput = string | { role: "user"; content: string | TextPart[] };

export interface CreateRunParams {
  agent: string;
  input: RunInput;
  multitask?: Multitask;
  metadata?: Record<string, unknown>;
}

export interface ResumeParams {
  decision: "approve" | "reject";
  input?: unknown;
}

export interface FieldProblem {
  field: string;
  message: string;
}

/** An `application/problem+json` answer. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  code: string;
  detail: string;
  fields?: FieldProblem[];
  request_id: string;
  [k: string]: unknown;
}

/** One server-sent run event. `id` is "N" (persisted) or "N.k" (token delta). */
export interface RunStreamEvent {
  id: string;
  event: string;
  data: Record<string, unknown>;
}
