import { CapstanError } from "../errors.js";
import type { Db, Queryable } from "./db.js";
import { fencedWrite } from "./fenced-write.js";
import { isUniqueViolation } from "./pg-errors.js";
import { USAGE_ON_CONFLICT, usageValues } from "./usage.js";
import { saveSummary, type NewThreadSummary } from "./summaries.js";
import {
  toStep,
  type Effect,
  type Lease,
  type NewEvent,
  type RunEvent,
  type Step,
  type StepError,
} from "./types.js";

/**
 * The step journal. A run is the sequence of steps (run_id, step_no); the
 * worker rebuilds its loop from this on resume. Every write is fenced: it
 * is one statement that first locks the run row at the caller's epoch
 * (src/state/fenced-write.ts), so a worker that lost its lease writes
 * nothing, and a write that commits is never silently lost to a concurrent
 * reclaim.
 */

export interface LlmStepInput {
  stepNo: number;
  /** `provider:model`, for the per-tenant usage rollup (default "unknown"). */
  model?: string;
  /** Served from the response cache: no tokens spent, `tokensSaved` avoided. */
  cache?: { hit: boolean; tokensSaved: number };
  /** What was asked (kept small: message count, tool names, settings). */
  request?: unknown;
  /** The full response: text, tool calls, finish reason. */
  response: unknown;
  usage: { inputTokens: number; outputTokens: number; cachedInputTokens?: number };
  startedAt: Date;
  /**
   * A summarisation step (bounded context): the summary is saved in the same
   * transaction as the step, so a crash leaves both or neither.
   */
  summary?: NewThreadSummary;
}

/**
 * Journal a completed LLM call with its token usage (added to the run's
 * totals and the tenant's daily rollup) and persist coarse events, in one
 * fenced statement (src/state/fenced-write.ts). A summarisation step also
 * saves its summary, in the same transaction.
 */
export async function appendLlmStep(
  db: Db,
  lease: Lease,
  step: LlmStepInput,
  events: NewEvent[] = [],
): Promise<RunEvent[]> {
  const usage = usageValues({
    model: step.model ?? "unknown",
    inputTokens: step.usage.inputTokens,
    outputTokens: step.usage.outputTokens,
    ...(step.usage.cachedInputTokens !== undefined
      ? { cachedInputTokens: step.usage.cachedInputTokens }
      : {}),
    ...(step.cache ? { cacheHit: step.cache.hit, tokensSaved: step.cache.tokensSaved } : {}),
  });
  const write = (q: Queryable) =>
    fencedWrite(q, lease, {
      step: `INSERT INTO steps (run_id, step_no, kind, status, attempt, epoch, input, output, input_tokens,
                                output_tokens, cached_input_tokens, started_at, finished_at)
             SELECT $1, $6, 'llm', 'completed', r.attempts, $2, $7, $8, $9, $10, $11, $12, now() FROM r
             RETURNING run_id`,
      runSet: `input_tokens = input_tokens + $9, output_tokens = output_tokens + $10,
               cached_input_tokens = cached_input_tokens + coalesce($11, 0)`,
      extra: `u AS (
        INSERT INTO usage_daily AS u (tenant_id, day, model, input_tokens, output_tokens, cached_input_tokens,
                                      llm_calls, cache_hits, tokens_saved)
        SELECT b.tenant_id, (now() AT TIME ZONE 'UTC')::date, $13, $14, $15, $16, $17, $18, $19 FROM b
        ${USAGE_ON_CONFLICT}
      )`,
      params: [
        step.stepNo,
        JSON.stringify(requestSummary(step)),
        JSON.stringify(step.response),
        step.usage.inputTokens,
        step.usage.outputTokens,
        step.usage.cachedInputTokens ?? null,
        step.startedAt,
        step.model ?? "unknown",
        ...usage,
      ],
      events,
    });
  try {
    if (!step.summary) return (await write(db)).events;
    const summary = step.summary;
    return await db.tx(async (q) => {
      const r = await write(q);
      await saveSummary(q, summary);
      return r.events;
    });
  } catch (err) {
    if (isUniqueViolation(err)) throw journalConflict(lease, step.stepNo);
    throw err;
  }
}

/**
 * The stored request summary of an LLM step: the caller's summary plus the
 * model and, for a response-cache hit, `cache: "hit"` and `tokens_saved`, so
 * the steps API can show them (the steps table has no columns for them).
 * A summary that is not an object is stored as given.
 */
function requestSummary(step: LlmStepInput): unknown {
  const req = step.request ?? {};
  if (typeof req !== "object" || req === null || Array.isArray(req)) return req;
  return {
    ...req,
    ...(step.model ? { model: step.model } : {}),
    ...(step.cache?.hit ? { cache: "hit", tokens_saved: step.cache.tokensSaved } : {}),
  };
}

export interface ToolIntentInput {
  stepNo: number;
  toolName: string;
  toolCallId: string;
  effect: Effect;
  idempotencyKey: string;
  args: unknown;
}

/**
 * Commit the intent to run a tool before it runs. Re-recording the intent of
 * a step whose earlier attempt left only an intent (crash mid-call) marks
 * the new attempt; a step that already has an outcome is refused.
 */
export async function recordToolIntent(
  db: Db,
  lease: Lease,
  intent: ToolIntentInput,
  events: NewEvent[] = [],
): Promise<RunEvent[]> {
  const r = await fencedWrite(db, lease, {
    step: `INSERT INTO steps (run_id, step_no, kind, status, attempt, epoch, tool_name, tool_call_id, effect,
                              idempotency_key, input)
           SELECT $1, $6, 'tool', 'started', r.attempts, $2, $7, $8, $9, $10, $11 FROM r
           ON CONFLICT (run_id, step_no) DO UPDATE SET attempt = EXCLUDED.attempt, epoch = EXCLUDED.epoch,
             started_at = now()
           WHERE steps.status = 'started' AND steps.kind = 'tool'
           RETURNING run_id`,
    params: [
      intent.stepNo,
      intent.toolName,
      intent.toolCallId,
      intent.effect,
      intent.idempotencyKey,
      JSON.stringify(intent.args ?? null),
    ],
    events,
  });
  if (!r.written) throw journalConflict(lease, intent.stepNo);
  return r.events;
}

export interface ToolOutcomeInput {
  stepNo: number;
  status: "completed" | "failed";
  result?: unknown;
  error?: StepError;
  /** Cacheable (pure) tools: whether the result came from the cache. */
  cacheHit?: boolean;
}

/** Record a tool's outcome. Only an open intent of this step can be completed. */
export async function recordToolOutcome(
  db: Db,
  lease: Lease,
  outcome: ToolOutcomeInput,
  events: NewEvent[] = [],
): Promise<RunEvent[]> {
  const r = await fencedWrite(db, lease, {
    step: `UPDATE steps SET status = $7, output = $8, error = $9, epoch = $2, cache_hit = $10, finished_at = now()
           WHERE run_id = (SELECT $1::uuid FROM r) AND step_no = $6 AND kind = 'tool' AND status = 'started'
           RETURNING run_id`,
    params: [
      outcome.stepNo,
      outcome.status,
      JSON.stringify(outcome.result ?? null),
      outcome.error ? JSON.stringify(outcome.error) : null,
      outcome.cacheHit ?? null,
    ],
    events,
  });
  if (!r.written) throw journalConflict(lease, outcome.stepNo);
  return r.events;
}

/**
 * Record a completed pure tool step in one write (no intent needed: a pure
 * call may simply be repeated after a crash).
 */
export async function appendPureToolStep(
  db: Db,
  lease: Lease,
  step: ToolIntentInput & ToolOutcomeInput & { startedAt: Date },
  events: NewEvent[] = [],
): Promise<RunEvent[]> {
  try {
    const r = await fencedWrite(db, lease, {
      step: `INSERT INTO steps (run_id, step_no, kind, status, attempt, epoch, tool_name, tool_call_id, effect,
                                idempotency_key, input, output, error, started_at, finished_at)
             SELECT $1, $6, 'tool', $7, r.attempts, $2, $8, $9, $10, $11, $12, $13, $14, $15, now() FROM r
             RETURNING run_id`,
      params: [
        step.stepNo,
        step.status,
        step.toolName,
        step.toolCallId,
        step.effect,
        step.idempotencyKey,
        JSON.stringify(step.args ?? null),
        JSON.stringify(step.result ?? null),
        step.error ? JSON.stringify(step.error) : null,
        step.startedAt,
      ],
      events,
    });
    return r.events;
  } catch (err) {
    if (isUniqueViolation(err)) throw journalConflict(lease, step.stepNo);
    throw err;
  }
}

/** Persist coarse events outside any step write (e.g. run.started), fenced. */
export async function appendEvents(db: Db, lease: Lease, events: NewEvent[]): Promise<RunEvent[]> {
  return (await fencedWrite(db, lease, { params: [], events })).events;
}

/** A run's journal in step order. */
export async function readJournal(q: Queryable, runId: string): Promise<Step[]> {
  const r = await q.query("SELECT * FROM steps WHERE run_id = $1 ORDER BY step_no", [runId]);
  return r.rows.map(toStep);
}

function journalConflict(lease: Lease, stepNo: number): CapstanError {
  return new CapstanError("journal_conflict", `step ${stepNo} of run ${lease.runId} is already journaled`, {
    details: { runId: lease.runId, stepNo },
  });
}
