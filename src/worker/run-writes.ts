import { listEvents } from "../state/events.js";
import {
  appendEvents,
  appendLlmStep,
  appendPureToolStep,
  recordToolIntent,
  recordToolOutcome,
  type LlmStepInput,
  type ToolIntentInput,
  type ToolOutcomeInput,
} from "../state/journal.js";
import { finishRun, releaseRun, suspendRun, type FinishInput } from "../state/scheduler.js";
import type { NewEvent, RunEvent } from "../state/types.js";
import { readWriteState, type WriteState } from "../state/write-outcome.js";
import { withDbRetry } from "./db-retry.js";
import type { RunContext } from "./run-loop.js";

/**
 * The writes of a run, each surviving lost connections (src/worker/db-retry.ts).
 * Each knows how to tell whether it committed after an unknown outcome: the
 * state it leaves is unique to this lease (the run's epoch moves on every
 * claim, and every step row records the epoch that wrote it), so "the row is
 * there at our epoch" means "our write committed". Its events are then read
 * back: every event persisted since the write began, which may include a
 * sibling step's (the stream drops a re-published id).
 */
type Scope = Pick<RunContext, "db" | "run" | "publisher" | "signal" | "logger" | "leaseValid">;

/** Coarse events persisted since `since`, for a write found committed (bounded; readers fill the rest). */
const RECOVERED_EVENTS_MAX = 1_000;

function probe(
  ctx: Scope,
  since: number,
  stepNo: number | undefined,
  done: (s: WriteState) => boolean,
): () => Promise<RunEvent[] | undefined> {
  return async () => {
    const state = await readWriteState(ctx.db, ctx.run.id, stepNo);
    return done(state) ? listEvents(ctx.db, ctx.run.id, since, RECOVERED_EVENTS_MAX) : undefined;
  };
}

/** A read (or a set of reads) of the run's state: simply re-run. */
export function readRetried<T>(ctx: Scope, what: string, read: () => Promise<T>): Promise<T> {
  return withDbRetry(ctx, what, read);
}

/** `run.started`: the first write of the attempt, so any event after the claim at our epoch is it. */
export async function writeRunStarted(ctx: Scope, events: NewEvent[]): Promise<RunEvent[]> {
  const { db, run } = ctx;
  const since = run.lastEventId;
  return withDbRetry(
    ctx,
    "run.started",
    () => appendEvents(db, run.lease, events),
    async () => {
      const state = await readWriteState(db, run.id);
      if (state.run?.leaseEpoch !== run.lease.epoch || state.run.lastEventId <= since) return undefined;
      const after = await listEvents(db, run.id, since, RECOVERED_EVENTS_MAX);
      return after.some((e) => e.type === "run.started") ? after : undefined;
    },
  );
}

export function writeLlmStep(ctx: Scope, step: LlmStepInput, events: NewEvent[]): Promise<RunEvent[]> {
  const { db, run } = ctx;
  const since = ctx.publisher.lastCoarseId;
  return withDbRetry(
    ctx,
    `llm step ${step.stepNo}`,
    () => appendLlmStep(db, run.lease, step, events),
    probe(ctx, since, step.stepNo, (s) => s.step?.kind === "llm" && s.step.epoch === run.lease.epoch),
  );
}

export function writeToolIntent(
  ctx: Scope,
  intent: ToolIntentInput,
  events: NewEvent[],
): Promise<RunEvent[]> {
  const { db, run } = ctx;
  const since = ctx.publisher.lastCoarseId;
  return withDbRetry(
    ctx,
    `tool intent ${intent.stepNo}`,
    () => recordToolIntent(db, run.lease, intent, events),
    probe(
      ctx,
      since,
      intent.stepNo,
      (s) => s.step?.kind === "tool" && s.step.status === "started" && s.step.epoch === run.lease.epoch,
    ),
  );
}

export function writeToolOutcome(
  ctx: Scope,
  outcome: ToolOutcomeInput,
  events: NewEvent[],
): Promise<RunEvent[]> {
  const { db, run } = ctx;
  const since = ctx.publisher.lastCoarseId;
  return withDbRetry(
    ctx,
    `tool outcome ${outcome.stepNo}`,
    () => recordToolOutcome(db, run.lease, outcome, events),
    probe(
      ctx,
      since,
      outcome.stepNo,
      (s) => s.step?.status === outcome.status && s.step.epoch === run.lease.epoch,
    ),
  );
}

export function writePureToolStep(
  ctx: Scope,
  step: Parameters<typeof appendPureToolStep>[2],
  events: NewEvent[],
): Promise<RunEvent[]> {
  const { db, run } = ctx;
  const since = ctx.publisher.lastCoarseId;
  return withDbRetry(
    ctx,
    `tool step ${step.stepNo}`,
    () => appendPureToolStep(db, run.lease, step, events),
    probe(ctx, since, step.stepNo, (s) => s.step?.status === step.status && s.step.epoch === run.lease.epoch),
  );
}

/** Finishing keeps the epoch: the run in the target status at our epoch is our commit. */
export function writeFinish(ctx: Scope, input: FinishInput): Promise<RunEvent[]> {
  const { db, run } = ctx;
  const since = ctx.publisher.lastCoarseId;
  return withDbRetry(
    ctx,
    `finish (${input.status})`,
    () => finishRun(db, run.lease, run.threadId, input),
    probe(
      ctx,
      since,
      undefined,
      (s) => s.run?.status === input.status && s.run.leaseEpoch === run.lease.epoch,
    ),
  );
}

/** Suspending moves the epoch by one: `waiting` at epoch + 1 is our commit. */
export function writeSuspend(ctx: Scope, wait: Record<string, unknown>): Promise<RunEvent[]> {
  const { db, run } = ctx;
  const since = ctx.publisher.lastCoarseId;
  return withDbRetry(
    ctx,
    "suspend",
    () => suspendRun(db, run.lease, wait),
    probe(
      ctx,
      since,
      undefined,
      (s) => s.run?.status === "waiting" && s.run.leaseEpoch === run.lease.epoch + 1,
    ),
  );
}

/** A graceful hand-off; re-running it after it committed changes nothing. */
export function writeRelease(ctx: Scope): Promise<boolean> {
  return withDbRetry(ctx, "release", () => releaseRun(ctx.db, ctx.run.lease));
}
