import { describe, expect, it } from "vitest";
import { attemptsExhausted, stuckStep } from "./progress.js";
import type { Step } from "./types.js";

function step(stepNo: number, kind: "llm" | "tool", extra: Partial<Step> = {}): Step {
  return {
    runId: "r",
    stepNo,
    kind,
    status: "completed",
    attempt: 1,
    epoch: 1,
    toolName: null,
    toolCallId: null,
    effect: null,
    idempotencyKey: null,
    input: null,
    output: null,
    error: null,
    inputTokens: null,
    outputTokens: null,
    cachedInputTokens: null,
    cacheHit: null,
    startedAt: new Date(0),
    finishedAt: null,
    ...extra,
  };
}
const llm = (stepNo: number, tools: string[] = []) =>
  step(stepNo, "llm", { output: { text: "", toolCalls: tools.map((toolName) => ({ toolName })) } });
const tool = (stepNo: number, toolName: string, status: Step["status"] = "completed") =>
  step(stepNo, "tool", { toolName, status });

describe("stuckStep", () => {
  it("names the first LLM step of an empty journal", () => {
    expect(stuckStep([])).toEqual({ stepNo: 0, kind: "llm" });
  });

  it("names an open intent, the call that was in flight", () => {
    expect(stuckStep([llm(0, ["a", "b"]), tool(1, "a"), tool(2, "b", "started")])).toEqual({
      stepNo: 2,
      kind: "tool",
      tool: "b",
    });
  });

  it("names a tool call with no row yet (a pure tool journals only its outcome) by the LLM step's call", () => {
    expect(stuckStep([llm(0, ["a", "b"]), tool(1, "a")])).toEqual({ stepNo: 2, kind: "tool", tool: "b" });
    expect(stuckStep([llm(0, ["a"])])).toEqual({ stepNo: 1, kind: "tool", tool: "a" });
  });

  it("names the LLM step after a round of completed tools, and after a step without tool calls", () => {
    expect(stuckStep([llm(0, ["a"]), tool(1, "a"), llm(2, ["c"]), tool(3, "c")])).toEqual({
      stepNo: 4,
      kind: "llm",
    });
    expect(stuckStep([llm(0)])).toEqual({ stepNo: 1, kind: "llm" });
  });
});

describe("attemptsExhausted", () => {
  it("carries the step in the message and as fields", () => {
    const e = attemptsExhausted({ stepNo: 3, kind: "tool", tool: "charge" }, 3);
    expect(e).toMatchObject({
      code: "attempts_exhausted",
      step_no: 3,
      kind: "tool",
      tool: "charge",
      lost_attempts: 3,
    });
    expect(e.message).toMatch(/3 attempts in a row at step 3 \(tool charge\)/);
    expect(attemptsExhausted({ stepNo: 0, kind: "llm" }, 2)).not.toHaveProperty("tool");
  });
});
