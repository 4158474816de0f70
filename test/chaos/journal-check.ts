/**
 * The chaos checker's proof that each run did what its plan said, from the
 * run's journal (every step, whatever its status) and the raw calls the
 * effects server saw. Pure functions, so test/chaos/journal-check.test.ts
 * can show every check firing.
 */
import type { ChaosPlan } from "../fixtures/chaos.config.js";
import type { ChaosEffects } from "./effects.js";

/** A journal row as the checker reads it from the steps table. */
export interface JournalRow {
  step_no: number;
  kind: string;
  status: string;
  tool_name: string | null;
  idempotency_key: string | null;
  input: unknown;
  error: { code?: string } | null;
}

export interface Decision {
  stepNo: number;
  reason: string;
  decision: "approve" | "reject";
}

export interface PlannedStep {
  stepNo: number;
  kind: "llm" | "tool";
  tool?: string;
}

/** The journal a plan makes: LLM step, its round of tools, …, the final LLM step (the answer). */
export function plannedSteps(plan: ChaosPlan): PlannedStep[] {
  const out: PlannedStep[] = [];
  let n = 0;
  for (const round of plan.rounds) {
    out.push({ stepNo: n++, kind: "llm" });
    for (const tool of round) out.push({ stepNo: n++, kind: "tool", tool });
  }
  out.push({ stepNo: n, kind: "llm" });
  return out;
}

export interface RunToCheck {
  /** For messages: the run's tag and id. */
  name: string;
  runId: string;
  status: string;
  plan: ChaosPlan;
  steps: JournalRow[];
  decisions: Decision[];
}

type Fx = Pick<ChaosEffects, "calls" | "appliedOrders" | "requests">;

/** Every way the run's journal and effects depart from its plan; empty when none does. */
export function journalViolations(run: RunToCheck, fx: Fx): string[] {
  const out: string[] = [];
  const v = (s: string) => out.push(`run ${run.name}: ${s}`);
  const planned = new Map(plannedSteps(run.plan).map((p) => [p.stepNo, p]));
  const journaled = new Map(run.steps.map((s) => [s.step_no, s]));

  for (const s of run.steps) {
    const p = planned.get(s.step_no);
    const what = s.kind === "tool" ? `tool ${s.tool_name}` : s.kind;
    if (!p) v(`step ${s.step_no} (${what}, ${s.status}) is not in the plan`);
    else if (p.kind !== s.kind || (p.kind === "tool" && p.tool !== s.tool_name))
      v(`step ${s.step_no} is ${what}, the plan says ${p.kind === "tool" ? `tool ${p.tool}` : p.kind}`);
    if (s.kind === "tool" && s.idempotency_key !== `${run.runId}:${s.step_no}`)
      v(`step ${s.step_no} has idempotency key ${s.idempotency_key}, expected ${run.runId}:${s.step_no}`);
  }
  if (run.status === "succeeded") {
    for (const p of planned.values())
      if (!journaled.has(p.stepNo)) v(`succeeded without step ${p.stepNo} of its plan`);
  }

  for (const s of run.steps) {
    if (s.kind === "llm") {
      if (s.status !== "completed") v(`LLM step ${s.step_no} is ${s.status}`);
      continue;
    }
    const key = s.idempotency_key ?? "";
    const rejected = s.status === "failed" && s.error?.code === "rejected";
    if (s.status === "started" && run.status === "succeeded")
      v(`succeeded with step ${s.step_no} (${s.tool_name}) still open (intent without outcome)`);
    if (s.status === "failed" && !(rejected && s.tool_name === "email"))
      v(`tool step ${s.step_no} (${s.tool_name}) failed: ${JSON.stringify(s.error)}`);
    switch (s.tool_name) {
      case "charge": {
        const amount = (s.input as { amount?: unknown } | null)?.amount;
        const order = `${run.runId}:charge:${String(amount)}`;
        const calls = fx.calls.idem.get(key)?.length ?? 0;
        const applied = fx.appliedOrders.idem.get(order) ?? 0;
        if (s.status === "completed" && (calls < 1 || applied !== 1))
          v(
            `charge step ${s.step_no} completed with ${calls} calls, order ${order} applied ${applied} times`,
          );
        break;
      }
      case "email": {
        const sent = fx.calls.side.get(key)?.length ?? 0;
        const about = run.decisions.filter((d) => d.stepNo === s.step_no);
        const refused = about.some((d) => d.reason === "approval" && d.decision === "reject");
        const alreadyDone = about.some((d) => d.reason === "unknown_outcome" && d.decision === "reject");
        if (s.status === "completed" && sent !== 1)
          v(`email step ${s.step_no} completed but was sent ${sent} times`);
        if (rejected && refused && sent !== 0)
          v(`email step ${s.step_no} was rejected by its reviewer but sent ${sent} times`);
        if (rejected && alreadyDone && sent !== 1)
          v(`email step ${s.step_no} was rejected as already sent but was sent ${sent} times`);
        if (rejected && !refused && !alreadyDone)
          v(`email step ${s.step_no} is rejected but no reviewer rejected it`);
        if (s.status === "started" && sent > 1) v(`email step ${s.step_no} sent ${sent} times`);
        break;
      }
      case "lookup":
        if (s.status === "completed" && (fx.requests.pure.get(key) ?? 0) < 1)
          v(`lookup step ${s.step_no} completed without a read`);
        break;
    }
  }
  return out;
}
