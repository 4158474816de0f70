import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { effectViolations, startChaosEffects, type ChaosEffects } from "./effects.js";
import { journalViolations, plannedSteps, type JournalRow, type RunToCheck } from "./journal-check.js";

/**
 * The chaos checker's proofs can fail: each check is shown firing on the
 * real effects server (raw calls over HTTP) and on journals that depart from
 * their plan, and staying quiet on an honest run.
 */
let fx: ChaosEffects;
beforeAll(async () => {
  fx = await startChaosEffects({ delayMs: [0, 0], sideDelayMs: [0, 0] });
});
afterAll(async () => {
  await fx?.close();
});

async function call(kind: "idem" | "side" | "pure", body: Record<string, unknown>): Promise<unknown> {
  const res = await fetch(`${fx.url}/${kind}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return res.json();
}

const messages = () => effectViolations(fx).map((x) => x.message);

describe("raw effect calls", () => {
  it("an idempotent key called again by a later lease is a retry: applied once, no violation", async () => {
    const a = await call("idem", { key: "R1:1", order: "R1:charge:1", epoch: 1 });
    const b = await call("idem", { key: "R1:1", order: "R1:charge:1", epoch: 2 });
    expect(b).toEqual(a);
    expect(fx.calls.idem.get("R1:1")?.map((c) => [c.epoch, c.applied])).toEqual([
      [1, true],
      [2, false],
    ]);
    expect(fx.appliedOrders.idem.get("R1:charge:1")).toBe(1);
    expect(messages()).toEqual([]);
  });

  it("the same key twice from one attempt, an order under two keys, a side effect sent twice: violations", async () => {
    await call("idem", { key: "R2:1", order: "R2:charge:1", epoch: 4 });
    await call("idem", { key: "R2:1", order: "R2:charge:1", epoch: 4 });
    await call("idem", { key: "R3:1", order: "R3:charge:1", epoch: 1 });
    await call("idem", { key: "R3:1-retry", order: "R3:charge:1", epoch: 2 });
    await call("side", { key: "R4:3", order: "R4:email:x", epoch: 1 });
    await call("side", { key: "R4:3", order: "R4:email:x", epoch: 2 });
    expect(effectViolations(fx).map((x) => x.subject)).toEqual(["R2:1", "R3:charge:1", "R4:3", "R4:email:x"]);
    expect(messages()[0]).toMatch(/R2:1 called 2 times, more than once by one attempt/);
    expect(messages()[1]).toMatch(/order R3:charge:1 applied 2 times/);
  });
});

describe("journal against plan", () => {
  const plan = { tag: "t", rounds: [["charge"], ["email"]] as ("charge" | "email" | "lookup")[][] };
  const runId = "P1";
  const row = (step_no: number, extra: Partial<JournalRow>): JournalRow => ({
    step_no,
    kind: "llm",
    status: "completed",
    tool_name: null,
    idempotency_key: null,
    input: null,
    error: null,
    ...extra,
  });
  const tool = (step_no: number, tool_name: string, extra: Partial<JournalRow> = {}) =>
    row(step_no, { kind: "tool", tool_name, idempotency_key: `${runId}:${step_no}`, ...extra });
  const honest = (): JournalRow[] => [
    row(0, {}),
    tool(1, "charge", { input: { amount: 1 } }),
    row(2, {}),
    tool(3, "email", { input: { to: "t@example.com" } }),
    row(4, {}),
  ];
  const check = (r: Partial<RunToCheck>) =>
    journalViolations(
      { name: "t", runId, status: "succeeded", plan, steps: honest(), decisions: [], ...r },
      fx,
    );

  beforeAll(async () => {
    await call("idem", { key: `${runId}:1`, order: `${runId}:charge:1`, epoch: 1 });
    await call("side", { key: `${runId}:3`, order: `${runId}:email:t`, epoch: 1 });
  });

  it("the plan's steps", () => {
    expect(plannedSteps(plan)).toEqual([
      { stepNo: 0, kind: "llm" },
      { stepNo: 1, kind: "tool", tool: "charge" },
      { stepNo: 2, kind: "llm" },
      { stepNo: 3, kind: "tool", tool: "email" },
      { stepNo: 4, kind: "llm" },
    ]);
  });

  it("an honest run passes", () => {
    expect(check({ decisions: [{ stepNo: 3, reason: "approval", decision: "approve" }] })).toEqual([]);
  });

  it("a wrong tool, a missing step, a step beyond the plan, an open intent: violations", () => {
    const steps = honest();
    steps[1] = tool(1, "lookup");
    expect(check({ steps })).toEqual([
      expect.stringMatching(/step 1 is tool lookup, the plan says tool charge/),
      expect.stringMatching(/lookup step 1 completed without a read/),
    ]);
    expect(check({ steps: honest().slice(0, 4) })).toEqual([
      expect.stringMatching(/succeeded without step 4/),
    ]);
    expect(check({ steps: [...honest(), row(5, {})] })).toEqual([
      expect.stringMatching(/step 5 \(llm, completed\) is not in the plan/),
    ]);
    const open = honest();
    open[1] = tool(1, "charge", { status: "started", input: { amount: 1 } });
    expect(check({ steps: open })).toEqual([expect.stringMatching(/still open/)]);
    // The same open intent in a run that failed is not a violation of the plan.
    expect(check({ steps: open, status: "failed" })).toEqual([]);
  });

  it("a completed charge without its effect, a rejected email that was sent: violations", () => {
    const steps = honest();
    steps[1] = tool(1, "charge", { input: { amount: 2 } });
    expect(check({ steps })).toEqual([
      expect.stringMatching(/charge step 1 completed with 1 calls, order P1:charge:2 applied 0 times/),
    ]);
    const rejected = honest();
    rejected[3] = tool(3, "email", { status: "failed", error: { code: "rejected" } });
    expect(
      check({ steps: rejected, decisions: [{ stepNo: 3, reason: "approval", decision: "reject" }] }),
    ).toEqual([expect.stringMatching(/rejected by its reviewer but sent 1 times/)]);
    // Rejected as already sent (unknown outcome, the human saw it go out): sent once is right.
    expect(
      check({ steps: rejected, decisions: [{ stepNo: 3, reason: "unknown_outcome", decision: "reject" }] }),
    ).toEqual([]);
    expect(check({ steps: rejected })).toEqual([expect.stringMatching(/no reviewer rejected it/)]);
  });
});
