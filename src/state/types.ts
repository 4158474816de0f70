/** Row types of the state layer, in the shapes the rest of the code uses. */
import type { RunErrorCode, StepErrorCode } from "../errors.js";

export type RunStatus = "queued" | "running" | "waiting" | "succeeded" | "failed" | "cancelled";
export type Multitask = "enqueue" | "reject" | "interrupt";
export type Effect = "pure" | "idempotent" | "side-effect";
export type MessageRole = "user" | "assistant" | "tool" | "system";

export const TERMINAL: readonly RunStatus[] = ["succeeded", "failed", "cancelled"];
export const isTerminal = (s: RunStatus): boolean => TERMINAL.includes(s);

/** What proves a worker owns a run right now. Every journal write carries it. */
export interface Lease {
  runId: string;
  epoch: number;
  workerId: string;
}

/** `runs.error`: why a run failed or was cancelled. */
export interface RunError {
  code: RunErrorCode;
  message: string;
  [k: string]: unknown;
}

/** `steps.error`: why a tool step failed (the run goes on). */
export interface StepError {
  code: StepErrorCode;
  message: string;
  [k: string]: unknown;
}

export interface Run {
  id: string;
  tenantId: string;
  threadId: string;
  agent: string;
  /** The user message as stored: `{ role: "user", content }`. */
  input: { role: "user"; content: unknown };
  metadata: Record<string, unknown>;
  status: RunStatus;
  multitask: Multitask;
  priority: number;
  /** Claims of the run (a graceful hand-off takes its claim back); reset by a resume. */
  attempts: number;
  maxAttempts: number;
  /**
   * Lost leases in a row whose attempt journaled nothing new (src/state/progress.ts);
   * the run fails with `attempts_exhausted` when it reaches `maxAttempts`.
   */
  stalledAttempts: number;
  leaseOwner: string | null;
  leaseExpiresAt: Date | null;
  leaseEpoch: number;
  idempotencyKey: string | null;
  requestHash: string | null;
  inputSeq: number | null;
  usage: { inputTokens: number; outputTokens: number; cachedInputTokens: number };
  error: RunError | null;
  wait: Record<string, unknown> | null;
  resume: Record<string, unknown> | null;
  lastEventId: number;
  createdAt: Date;
  queuedAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
}

/**
 * W3C Trace Context (`traceparent`, optional `tracestate`) stored with a run
 * so the worker continues the trace of the request that created it.
 */
export interface TraceContext {
  traceparent: string;
  tracestate?: string;
}

export interface ClaimedRun extends Run {
  lease: Lease;
  /** The trace to continue; null when tracing was off at enqueue (or the run predates it). */
  traceContext: TraceContext | null;
}

export interface Message {
  threadId: string;
  seq: number;
  role: MessageRole;
  content: unknown;
  runId: string | null;
  createdAt: Date;
}

export interface NewMessage {
  role: MessageRole;
  content: unknown;
}

export interface Step {
  runId: string;
  stepNo: number;
  kind: "llm" | "tool";
  status: "started" | "completed" | "failed";
  attempt: number;
  epoch: number;
  toolName: string | null;
  toolCallId: string | null;
  effect: Effect | null;
  idempotencyKey: string | null;
  input: unknown;
  output: unknown;
  error: StepError | null;
  inputTokens: number | null;
  outputTokens: number | null;
  cachedInputTokens: number | null;
  /** Tool steps of cacheable tools: served from the pure-tool cache (true) or run (false); else null. */
  cacheHit: boolean | null;
  startedAt: Date;
  finishedAt: Date | null;
}

/** A coarse event as persisted; `id` is monotonic and gap-free per run. */
export interface RunEvent {
  runId: string;
  id: number;
  type: string;
  data: Record<string, unknown>;
  createdAt: Date;
}

export interface NewEvent {
  type: string;
  data: Record<string, unknown>;
}

// ---- row mappers (snake_case rows → camelCase objects) ----

type Row = Record<string, unknown>;

export function toRun(r: Row): Run {
  return {
    id: r.id as string,
    tenantId: r.tenant_id as string,
    threadId: r.thread_id as string,
    agent: r.agent as string,
    input: r.input as Run["input"],
    metadata: (r.metadata ?? {}) as Record<string, unknown>,
    status: r.status as RunStatus,
    multitask: r.multitask as Multitask,
    priority: r.priority as number,
    attempts: r.attempts as number,
    maxAttempts: r.max_attempts as number,
    stalledAttempts: (r.stalled_attempts as number | undefined) ?? 0,
    leaseOwner: (r.lease_owner as string | null) ?? null,
    leaseExpiresAt: (r.lease_expires_at as Date | null) ?? null,
    leaseEpoch: r.lease_epoch as number,
    idempotencyKey: (r.idempotency_key as string | null) ?? null,
    requestHash: (r.request_hash as string | null) ?? null,
    inputSeq: (r.input_seq as number | null) ?? null,
    usage: {
      inputTokens: r.input_tokens as number,
      outputTokens: r.output_tokens as number,
      cachedInputTokens: Number(r.cached_input_tokens ?? 0),
    },
    error: (r.error as RunError | null) ?? null,
    wait: (r.wait as Record<string, unknown> | null) ?? null,
    resume: (r.resume as Record<string, unknown> | null) ?? null,
    lastEventId: r.last_event_id as number,
    createdAt: r.created_at as Date,
    queuedAt: r.queued_at as Date,
    startedAt: (r.started_at as Date | null) ?? null,
    finishedAt: (r.finished_at as Date | null) ?? null,
  };
}

/**
 * The stored `runs.trace_context`, or null when it is absent or not of the
 * expected shape (the propagator validates the header values themselves).
 */
export function toTraceContext(v: unknown): TraceContext | null {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return null;
  const { traceparent, tracestate } = v as Record<string, unknown>;
  if (typeof traceparent !== "string") return null;
  return typeof tracestate === "string" && tracestate !== "" ? { traceparent, tracestate } : { traceparent };
}

export function toMessage(r: Row): Message {
  return {
    threadId: r.thread_id as string,
    seq: r.seq as number,
    role: r.role as MessageRole,
    content: r.content,
    runId: (r.run_id as string | null) ?? null,
    createdAt: r.created_at as Date,
  };
}

export function toStep(r: Row): Step {
  return {
    runId: r.run_id as string,
    stepNo: r.step_no as number,
    kind: r.kind as Step["kind"],
    status: r.status as Step["status"],
    attempt: r.attempt as number,
    epoch: r.epoch as number,
    toolName: (r.tool_name as string | null) ?? null,
    toolCallId: (r.tool_call_id as string | null) ?? null,
    effect: (r.effect as Effect | null) ?? null,
    idempotencyKey: (r.idempotency_key as string | null) ?? null,
    input: r.input ?? null,
    output: r.output ?? null,
    error: (r.error as StepError | null) ?? null,
    inputTokens: (r.input_tokens as number | null) ?? null,
    outputTokens: (r.output_tokens as number | null) ?? null,
    cachedInputTokens: (r.cached_input_tokens as number | null) ?? null,
    cacheHit: (r.cache_hit as boolean | null) ?? null,
    startedAt: r.started_at as Date,
    finishedAt: (r.finished_at as Date | null) ?? null,
  };
}

export function toEvent(r: Row): RunEvent {
  return {
    runId: r.run_id as string,
    id: r.id as number,
    type: r.type as string,
    data: r.data as Record<string, unknown>,
    createdAt: r.created_at as Date,
  };
}
