import type { ToolDefinition } from "../agent/types.js";
import { LeaseLostError, type StepErrorCode } from "../errors.js";
import type { NewEvent, Step, StepError } from "../state/types.js";
import { outcomeOfStep, type ToolOutcome } from "./messages.js";
import type { RunContext } from "./run-loop.js";
import { writePureToolStep, writeToolIntent, writeToolOutcome } from "./run-writes.js";

export type ToolStepResult =
  { kind: "done"; outcome: ToolOutcome } | { kind: "wait"; wait: Record<string, unknown> };

interface ToolCall {
  toolCallId: string;
  toolName: string;
  input: unknown;
}

/**
 * One tool call as a journaled step, with the effect rules of docs/architecture.md#tools-and-effects:
 * - an outcome in the journal is reused, never re-executed;
 * - an intent without outcome (crash mid-call) is re-run for `pure` and
 *   `idempotent` tools (same idempotency key), and parks the run in
 *   `waiting` for `side-effect` tools until a human decides;
 * - `requiresApproval` tools wait for approval before their intent.
 */
export async function runToolStep(
  ctx: RunContext,
  stepNo: number,
  call: ToolCall,
  journaled: Step | undefined,
): Promise<ToolStepResult> {
  if (journaled && journaled.status !== "started") return { kind: "done", outcome: outcomeOfStep(journaled) };
  const { run } = ctx;
  const idempotencyKey = `${run.id}:${stepNo}`;
  const def = ctx.agent.def.tools[call.toolName];
  const base = { stepNo, toolName: call.toolName, toolCallId: call.toolCallId, idempotencyKey };

  if (!def) {
    return recordRefusal(ctx, base, call.input, "unknown_tool", `there is no tool named "${call.toolName}"`);
  }
  const parsed = def.input.safeParse(call.input);
  if (!parsed.success) {
    const detail = parsed.error.issues.map((i) => `${i.path.join(".") || "(root)"}: ${i.message}`).join("; ");
    return recordRefusal(
      ctx,
      { ...base, effect: def.effect },
      call.input,
      "invalid_arguments",
      `invalid arguments for ${call.toolName}: ${detail}`,
    );
  }
  const args: unknown = parsed.data;
  const decision = decisionFor(run.resume, stepNo);
  const waitInfo = { step_no: stepNo, tool: call.toolName, tool_call_id: call.toolCallId, args };

  // Only a decision about the unknown outcome itself may re-run a started side effect: the
  // approval given before it first ran does not cover running it a second time.
  const resumedWait = run.resume?.wait as { reason?: unknown } | undefined;
  if (
    journaled?.status === "started" &&
    def.effect === "side-effect" &&
    !(decision && resumedWait?.reason === "unknown_outcome")
  ) {
    return {
      kind: "wait",
      wait: { reason: "unknown_outcome", ...waitInfo, idempotency_key: idempotencyKey },
    };
  }
  if (def.requiresApproval && !decision) {
    return { kind: "wait", wait: { reason: "approval", ...waitInfo } };
  }
  if (decision?.decision === "reject") {
    const message =
      decision.input !== undefined
        ? `not executed: rejected by a reviewer (${typeof decision.input === "string" ? decision.input : JSON.stringify(decision.input)})`
        : "not executed: rejected by a reviewer";
    return recordRefusal(
      ctx,
      { ...base, effect: def.effect },
      args,
      "rejected",
      message,
      journaled !== undefined,
    );
  }
  return execute(ctx, def, { ...base, effect: def.effect, args });
}

function decisionFor(
  resume: Record<string, unknown> | null,
  stepNo: number,
): { decision: "approve" | "reject"; input?: unknown } | undefined {
  if (!resume) return undefined;
  const wait = resume.wait as { step_no?: unknown } | undefined;
  if (wait?.step_no !== stepNo) return undefined;
  const d = resume.decision;
  return d === "approve" || d === "reject" ? { decision: d, input: resume.input } : undefined;
}

async function execute(
  ctx: RunContext,
  def: ToolDefinition,
  step: {
    stepNo: number;
    toolName: string;
    toolCallId: string;
    idempotencyKey: string;
    effect: ToolDefinition["effect"];
    args: unknown;
  },
): Promise<ToolStepResult> {
  const { run, publisher } = ctx;
  const startEvent: NewEvent = {
    type: "tool.started",
    data: {
      run_id: run.id,
      step_no: step.stepNo,
      tool_call_id: step.toolCallId,
      tool: step.toolName,
      args: step.args,
    },
  };
  await publisher.coarse(await writeToolIntent(ctx, step, [startEvent]));
  // The intent is committed, but this process may have been paused since (GC, SIGSTOP, a frozen
  // VM) past its lease: another worker may own the step by now and a human may have approved a
  // re-run. PostgreSQL fences our writes, not the tool's effect, so never start one then.
  if (def.effect !== "pure" && ctx.leaseValid?.() === false)
    throw new LeaseLostError(run.id, run.lease.epoch);

  const startedAt = Date.now();
  const timeout = AbortSignal.timeout(def.timeoutMs);
  const signal = AbortSignal.any([ctx.signal, timeout]);
  const toolCache = ctx.services.cost?.toolCache;
  const cached =
    toolCache && def.effect === "pure" && def.cache
      ? await toolCache.lookup({
          tenantId: run.tenantId,
          toolName: step.toolName,
          tool: def,
          args: step.args,
        })
      : undefined;
  if (cached?.enabled) ctx.hooks.onCache?.({ cache: "tool", hit: !!cached.hit });
  let outcome: ToolOutcome;
  let error: StepError | undefined;
  let result: unknown;
  try {
    if (cached?.hit) {
      result = cached.hit.value;
    } else {
      const call = () =>
        def.run(step.args, {
          idempotencyKey: step.idempotencyKey,
          fencingToken: run.lease.epoch,
          signal,
          runId: run.id,
          threadId: run.threadId,
          tenantId: run.tenantId,
          toolCallId: step.toolCallId,
          logger: ctx.logger.child({ stepNo: step.stepNo, tool: step.toolName }),
          invalidate: async (tags) => {
            if (!toolCache) return;
            await toolCache.invalidate(run.tenantId, typeof tags === "string" ? [tags] : [...tags]);
          },
        });
      // Non-pure tools: their fetch requests also check the lease right before being written.
      const guard = def.effect !== "pure" ? ctx.services.leaseGuard : undefined;
      const leaseValid = ctx.leaseValid;
      const value: unknown = await (guard && leaseValid ? guard.run(leaseValid, call) : call());
      result = toJson(value);
      await cached?.store(result);
    }
    outcome = { ok: true, value: result };
  } catch (err) {
    // Cancel, lease loss or shutdown: write nothing more; the outcome stays unknown.
    if (ctx.signal.aborted) throw ctx.signal.reason ?? err;
    // The lease may have run out during the call (the watchdog may not have fired yet): same.
    if (ctx.leaseValid?.() === false) throw new LeaseLostError(run.id, run.lease.epoch);
    const message = timeout.aborted
      ? `${step.toolName} timed out after ${def.timeoutMs} ms`
      : `${step.toolName} failed: ${err instanceof Error ? err.message : String(err)}`;
    error = { code: timeout.aborted ? "tool_timeout" : "tool_error", message };
    outcome = { ok: false, error: message };
    // The model sees the failure and may carry on; the operator should see it too.
    ctx.logger.warn({ stepNo: step.stepNo, tool: step.toolName, error }, "tool call failed");
  }
  await publisher.coarse(
    await writeToolOutcome(
      ctx,
      {
        stepNo: step.stepNo,
        status: error ? "failed" : "completed",
        result,
        ...(error ? { error } : {}),
        ...(cached?.enabled ? { cacheHit: !!cached.hit } : {}),
      },
      completedEvents(run.id, step, outcome, cached?.hit ? { cache: "hit" } : {}),
    ),
  );
  ctx.hooks.onStep?.({
    agent: run.agent,
    kind: "tool",
    ms: Date.now() - startedAt,
    runId: run.id,
    stepNo: step.stepNo,
    toolName: step.toolName,
  });
  return { kind: "done", outcome };
}

/** Journal a call that was never executed (unknown tool, invalid args, rejected). */
async function recordRefusal(
  ctx: RunContext,
  step: {
    stepNo: number;
    toolName: string;
    toolCallId: string;
    idempotencyKey: string;
    effect?: ToolDefinition["effect"];
  },
  args: unknown,
  code: StepErrorCode,
  message: string,
  hasIntent = false,
): Promise<ToolStepResult> {
  const { run, publisher } = ctx;
  const outcome: ToolOutcome = { ok: false, error: message };
  const events = completedEvents(run.id, step, outcome);
  const error = { code, message };
  if (hasIntent) {
    await publisher.coarse(
      await writeToolOutcome(ctx, { stepNo: step.stepNo, status: "failed", error }, events),
    );
  } else {
    await publisher.coarse(
      await writePureToolStep(
        ctx,
        { ...step, effect: step.effect ?? "pure", args, status: "failed", error, startedAt: new Date() },
        events,
      ),
    );
  }
  return { kind: "done", outcome };
}

function completedEvents(
  runId: string,
  step: { stepNo: number; toolName: string; toolCallId: string },
  outcome: ToolOutcome,
  extra: Record<string, unknown> = {},
): NewEvent[] {
  return [
    {
      type: "tool.completed",
      data: {
        run_id: runId,
        step_no: step.stepNo,
        tool_call_id: step.toolCallId,
        tool: step.toolName,
        ...(outcome.ok ? { result: outcome.value } : { error: outcome.error }),
      },
    },
    {
      type: "step.completed",
      data: { run_id: runId, step_no: step.stepNo, kind: "tool", ok: outcome.ok, ...extra },
    },
  ];
}

/** Tool results are journaled as JSON; anything else is a tool error, not a crash. */
function toJson(value: unknown): unknown {
  if (value === undefined) return null;
  try {
    return JSON.parse(JSON.stringify(value)) as unknown;
  } catch (err) {
    throw new Error(`result is not JSON-serialisable: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
    });
  }
}
