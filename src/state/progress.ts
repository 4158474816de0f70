import type { RunError, Step } from "./types.js";

/**
 * What an attempt must do for a lost lease not to count against the run.
 *
 * The journal's progress measure is the number of step rows plus the number
 * of steps with an outcome. It only grows (rows are never deleted while the
 * run exists, and a step's status only moves from `started` to an outcome),
 * and every journal write that records work raises it: a new LLM step, a new
 * pure tool step, a tool's intent and a tool's outcome. Re-recording the
 * intent of a step left open by a crash does not raise it: that is exactly
 * what a worker that dies inside the same tool call over and over does.
 *
 * The claim stores the measure in `runs.claim_progress`; when the lease is
 * lost, reclaim compares. Both read the journal while holding the run row at
 * the attempt's epoch (no fenced write of that epoch can commit afterwards),
 * so the comparison is exact.
 *
 * Returns a scalar subquery (an int) for the run whose id is the SQL expression `runId`.
 */
export const journalProgressSql = (runId: string): string =>
  `(SELECT (count(*) + count(*) FILTER (WHERE s.status <> 'started'))::int FROM steps s WHERE s.run_id = ${runId})`;

/** The step a run never got past: the one its lost attempts were at. */
export interface StuckStep {
  stepNo: number;
  kind: "llm" | "tool";
  /** Tool steps: the tool's name. */
  tool?: string;
}

/**
 * Where the run loop would resume: the lowest open tool intent (the call
 * that was in flight), else the first step not in the journal, following the
 * run loop's numbering (an LLM step k is followed by its tool calls at
 * k+1…k+n, then the next LLM step).
 */
export function stuckStep(steps: Step[]): StuckStep {
  const open = steps.filter((s) => s.status === "started").sort((a, b) => a.stepNo - b.stepNo)[0];
  if (open) return { stepNo: open.stepNo, kind: "tool", ...(open.toolName ? { tool: open.toolName } : {}) };
  const byNo = new Map(steps.map((s) => [s.stepNo, s]));
  let stepNo = 0;
  for (;;) {
    const step = byNo.get(stepNo);
    if (!step) return { stepNo, kind: "llm" };
    if (step.kind === "tool") {
      stepNo++;
      continue;
    }
    const calls = toolCallNames(step.output);
    for (let i = 0; i < calls.length; i++) {
      if (!byNo.has(stepNo + 1 + i)) return { stepNo: stepNo + 1 + i, kind: "tool", tool: calls[i]! };
    }
    stepNo += calls.length + 1;
  }
}

function toolCallNames(output: unknown): string[] {
  const calls = (output as { toolCalls?: unknown } | null)?.toolCalls;
  if (!Array.isArray(calls)) return [];
  return calls.map((c) => {
    const name = (c as { toolName?: unknown } | null)?.toolName;
    return typeof name === "string" ? name : "(unnamed)";
  });
}

/** The error of a run failed because `lost` attempts in a row lost their worker at `step`. */
export function attemptsExhausted(step: StuckStep, lost: number): RunError {
  const where =
    step.kind === "tool" ? `step ${step.stepNo} (tool ${step.tool ?? "?"})` : `step ${step.stepNo} (llm)`;
  return {
    code: "attempts_exhausted",
    message:
      `the run lost its worker on ${lost} attempts in a row at ${where} without journaling a step ` +
      "(the step crashes or stalls its worker, or takes longer than workers stay up)",
    step_no: step.stepNo,
    kind: step.kind,
    ...(step.tool !== undefined ? { tool: step.tool } : {}),
    lost_attempts: lost,
  };
}
