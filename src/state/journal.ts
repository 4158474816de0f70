import { CapstanError } from "../errors.js";
import type { Db, Queryable } from "./db.js";
import { insertEvents } from "./events.js";
import { isUniqueViolation } from "./pg-errors.js";
import { assertLeaseTx } from "./scheduler.js";
import { recordUsageTx } from "./usage.js";
import { saveSummary, type NewThreadSummary } from "./summaries.js";
import {
  toStep,
  type Effect,
  type Lease,
  type NewEvent,
  type RunError,
  type RunEvent,
  type Step,
} from "./types.js";

/**
 * The step journal. A run is the sequence of steps (run_id, step_no); the
 * worker rebuilds its loop from this on resume. Every write is fenced: it
 * runs in a transaction that first locks the run row at the caller's epoch
 * (`assertLeaseTx`), so a worker that lost its lease writes nothing, and a
 * write that commits is never silently lost to a concurrent reclaim.
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

async function fenced<T>(
  db: Db,
  lease: Lease,
  fn: (q: Queryable, attempt: number, tenantId: string) => Promise<T>,
): Promise<T> {
  return db.tx(async (q) => {
    const run = await assertLeaseTx(q, lease);
    return fn(q, run.attempts, run.tenantId);
  });
}

/**
 * Journal a completed LLM call with its token usage (added to the run's
 * totals) and persist coarse events in the same transaction.
 */
export async function appendLlmStep(
  db: Db,
  lease: Lease,
  step: LlmStepInput,
  events: NewEvent[] = [],
): Promise<RunEvent[]> {
  return fenced(db, lease, async (q, attempt, tenantId) => {
    try {
      await q.query(
        `INSERT INTO steps (run_id, step_no, kind, status, attempt, epoch, input, output,
                            input_tokens, output_tokens, cached_input_tokens, started_at, finished_at)
         VALUES ($1, $2, 'llm', 'completed', $3, $4, $5, $6, $7, $8, $9, $10, now())`,
        [
          lease.runId,
          step.stepNo,
          attempt,
          lease.epoch,
          JSON.stringify(step.request ?? null),
          JSON.stringify(step.response),
          step.usage.inputTokens,
          step.usage.outputTokens,
          step.usage.cachedInputTokens ?? null,
          step.startedAt,
        ],
      );
    } catch (err) {
      if (isUniqueViolation(err)) throw journalConflict(lease, step.stepNo);
      throw err;
    }
    await q.query(
      `UPDATE runs SET input_tokens = input_tokens + $2, output_tokens = output_tokens + $3,
         cached_input_tokens = cached_input_tokens + $4 WHERE id = $1`,
      [lease.runId, step.usage.inputTokens, step.usage.outputTokens, step.usage.cachedInputTokens ?? 0],
    );
    await recordUsageTx(q, {
      tenantId,
      model: step.model ?? "unknown",
      inputTokens: step.usage.inputTokens,
      outputTokens: step.usage.outputTokens,
      ...(step.usage.cachedInputTokens !== undefined
        ? { cachedInputTokens: step.usage.cachedInputTokens }
        : {}),
      ...(step.cache ? { cacheHit: step.cache.hit, tokensSaved: step.cache.tokensSaved } : {}),
    });
    if (step.summary) await saveSummary(q, step.summary);
    return insertEvents(q, lease.runId, events);
  });
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
  return fenced(db, lease, async (q, attempt) => {
    const r = await q.query(
      `INSERT INTO steps (run_id, step_no, kind, status, attempt, epoch, tool_name, tool_call_id, effect,
                          idempotency_key, input)
       VALUES ($1, $2, 'tool', 'started', $3, $4, $5, $6, $7, $8, $9)
       ON CONFLICT (run_id, step_no) DO UPDATE SET attempt = EXCLUDED.attempt, epoch = EXCLUDED.epoch,
         started_at = now()
       WHERE steps.status = 'started' AND steps.kind = 'tool'
       RETURNING step_no`,
      [
        lease.runId,
        intent.stepNo,
        attempt,
        lease.epoch,
        intent.toolName,
        intent.toolCallId,
        intent.effect,
        intent.idempotencyKey,
        JSON.stringify(intent.args ?? null),
      ],
    );
    if (r.rows.length === 0) throw journalConflict(lease, intent.stepNo);
    return insertEvents(q, lease.runId, events);
  });
}

export interface ToolOutcomeInput {
  stepNo: number;
  status: "completed" | "failed";
  result?: unknown;
  error?: RunError;
}

/** Record a tool's outcome. Only an open intent of this step can be completed. */
export async function recordToolOutcome(
  db: Db,
  lease: Lease,
  outcome: ToolOutcomeInput,
  events: NewEvent[] = [],
): Promise<RunEvent[]> {
  return fenced(db, lease, async (q) => {
    const r = await q.query(
      `UPDATE steps SET status = $3, output = $4, error = $5, epoch = $6, finished_at = now()
       WHERE run_id = $1 AND step_no = $2 AND kind = 'tool' AND status = 'started'
       RETURNING step_no`,
      [
        lease.runId,
        outcome.stepNo,
        outcome.status,
        JSON.stringify(outcome.result ?? null),
        outcome.error ?? null,
        lease.epoch,
      ],
    );
    if (r.rows.length === 0) throw journalConflict(lease, outcome.stepNo);
    return insertEvents(q, lease.runId, events);
  });
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
  return fenced(db, lease, async (q, attempt) => {
    try {
      await q.query(
        `INSERT INTO steps (run_id, step_no, kind, status, attempt, epoch, tool_name, tool_call_id, effect,
                            idempotency_key, input, output, error, started_at, finished_at)
         VALUES ($1, $2, 'tool', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now())`,
        [
          lease.runId,
          step.stepNo,
          step.status,
          attempt,
          lease.epoch,
          step.toolName,
          step.toolCallId,
          step.effect,
          step.idempotencyKey,
          JSON.stringify(step.args ?? null),
          JSON.stringify(step.result ?? null),
          step.error ?? null,
          step.startedAt,
        ],
      );
    } catch (err) {
      if (isUniqueViolation(err)) throw journalConflict(lease, step.stepNo);
      throw err;
    }
    return insertEvents(q, lease.runId, events);
  });
}

/** Persist coarse events outside any step write (e.g. run.started), fenced. */
export async function appendEvents(db: Db, lease: Lease, events: NewEvent[]): Promise<RunEvent[]> {
  return fenced(db, lease, (q) => insertEvents(q, lease.runId, events));
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
