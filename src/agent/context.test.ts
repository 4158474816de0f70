import { describe, expect, it } from "vitest";
import {
  buildSummaryRequest,
  contentText,
  estimateMessageTokens,
  estimateSummaryTokens,
  estimateTextTokens,
  planContext,
  renderSummary,
  type ContextBudget,
  type ContextMessage,
  type ContextPlan,
  type ContextSummary,
} from "./context.js";

/* A thread in the stored shape: turns of user → assistant (tool call) → tool → assistant. */

function turn(seq: number, i: number, withTool: boolean): ContextMessage[] {
  const out: ContextMessage[] = [
    { seq, role: "user", content: `Question ${i}: ${"please look into this. ".repeat(6)}` },
  ];
  if (withTool) {
    out.push({
      seq: seq + 1,
      role: "assistant",
      content: [
        { type: "text", text: "Let me check." },
        { type: "tool-call", toolCallId: `c${i}`, toolName: "lookup", input: { q: `item ${i}` } },
      ],
    });
    out.push({
      seq: seq + 2,
      role: "tool",
      content: [
        {
          type: "tool-result",
          toolCallId: `c${i}`,
          toolName: "lookup",
          output: { type: "json", value: { found: i, note: "x".repeat(200) } },
        },
      ],
    });
  }
  out.push({
    seq: seq + out.length,
    role: "assistant",
    content: [{ type: "text", text: `Answer ${i}: ${"here is what I found. ".repeat(5)}` }],
  });
  return out;
}

function thread(messageCount: number): ContextMessage[] {
  const out: ContextMessage[] = [];
  for (let i = 0; out.length < messageCount; i++) out.push(...turn(out.length + 1, i, i % 2 === 0));
  return out.slice(0, messageCount);
}

/** A stand-in summariser: deterministic text near the asked-for size. */
function summarise(plan: ContextPlan): string {
  const s = plan.toSummarise!;
  const text = `Summary of messages 1..${s.toSeq}. `;
  return text + "f".repeat(Math.max(0, s.summaryTokens * 3 - text.length));
}

/** Checks that hold for every plan. */
function checkPlan(messages: ContextMessage[], summary: ContextSummary | null, plan: ContextPlan): void {
  const after = summary?.toSeq ?? 0;
  const rec = plan.recentMessages;
  expect(rec.length).toBeGreaterThan(0);
  // Recent = a suffix of the thread, newest message included.
  expect(rec[rec.length - 1]).toBe(messages[messages.length - 1]);
  rec.forEach((m, i) => {
    if (i > 0) expect(m.seq).toBe(rec[i - 1]!.seq + 1);
  });
  // Never starts with tool results cut off from their call.
  expect(rec[0]!.role).not.toBe("tool");
  if (plan.toSummarise) {
    const s = plan.toSummarise;
    expect(s.fromSeq).toBe(after + 1);
    expect(s.messages[0]!.seq).toBe(after + 1);
    expect(s.messages[s.messages.length - 1]!.seq).toBe(s.toSeq);
    expect(s.toSeq).toBeLessThan(rec[0]!.seq);
    // The message after the folded part is not a tool result of a folded call.
    const next = messages.find((m) => m.seq === s.toSeq + 1);
    expect(next?.role).not.toBe("tool");
    expect(s.previousSummary).toBe(summary?.summary ?? null);
  } else {
    expect(rec[0]!.seq).toBe(after + 1);
    expect(plan.summaryToUse).toBe(summary);
  }
}

/** The worker's loop: plan, summarise and save until the plan needs no summary. */
function settle(
  messages: ContextMessage[],
  start: ContextSummary | null,
  budget: ContextBudget,
  saved: { fromSeq: number; toSeq: number }[],
): { plan: ContextPlan; summary: ContextSummary | null } {
  let summary = start;
  for (let round = 0; ; round++) {
    expect(round).toBeLessThan(50);
    const plan = planContext({ messages, summary, budget });
    checkPlan(messages, summary, plan);
    if (!plan.toSummarise) return { plan, summary };
    saved.push({ fromSeq: plan.toSummarise.fromSeq, toSeq: plan.toSummarise.toSeq });
    summary = { toSeq: plan.toSummarise.toSeq, summary: summarise(plan) };
  }
}

/** Tokens of the prompt a settled plan produces. */
function promptTokens(plan: ContextPlan): number {
  return (
    (plan.summaryToUse ? estimateSummaryTokens(plan.summaryToUse) : 0) +
    plan.recentMessages.reduce((n, m) => n + estimateMessageTokens(m), 0)
  );
}

describe("token estimates", () => {
  it("are ceil(chars / 4), JSON for non-string content, plus 4 per message", () => {
    expect(estimateTextTokens("")).toBe(0);
    expect(estimateTextTokens("abcde")).toBe(2);
    expect(estimateMessageTokens({ content: "abcd" })).toBe(5);
    const parts = [{ type: "text", text: "hi" }];
    expect(estimateMessageTokens({ content: parts })).toBe(4 + Math.ceil(JSON.stringify(parts).length / 4));
  });
});

describe("planContext", () => {
  const budget: ContextBudget = { maxTokens: 4000 };

  it("sends everything when it fits", () => {
    const messages = thread(10);
    const plan = planContext({ messages, summary: null, budget });
    expect(plan).toMatchObject({ summaryToUse: null, toSummarise: null, fits: true });
    expect(plan.recentMessages).toEqual(messages);
    expect(plan.estimatedTokens).toBe(promptTokens(plan));
  });

  it("a 500-message thread gets a bounded prompt and one summary of the right range", () => {
    const messages = thread(500);
    const total = messages.reduce((n, m) => n + estimateMessageTokens(m), 0);
    expect(total).toBeGreaterThan(5 * budget.maxTokens);

    // A summariser with room for the whole folded part: one round.
    const saved: { fromSeq: number; toSeq: number }[] = [];
    const { plan, summary } = settle(messages, null, { ...budget, summariserMaxTokens: 64_000 }, saved);
    expect(saved).toHaveLength(1);
    expect(saved[0]!.fromSeq).toBe(1);
    expect(summary?.toSeq).toBe(saved[0]!.toSeq);
    expect(plan.summaryToUse).toBe(summary);
    expect(plan.recentMessages[0]!.seq).toBe(summary!.toSeq + 1);
    expect(plan.recentMessages[0]!.role).toBe("user");
    expect(plan.fits).toBe(true);
    expect(promptTokens(plan)).toBeLessThanOrEqual(budget.maxTokens);
    // Hysteresis: the recent part is about half the room, not all of it.
    const recent = plan.recentMessages.reduce((n, m) => n + estimateMessageTokens(m), 0);
    expect(recent).toBeLessThanOrEqual((budget.maxTokens - 800 - 4) / 2);
  });

  it("keeps every prompt bounded while a conversation grows to 500 messages, summarising rarely, in contiguous ranges", () => {
    const all = thread(500);
    const saved: { fromSeq: number; toSeq: number }[] = [];
    let summary: ContextSummary | null = null;
    let maxPrompt = 0;
    for (let n = 1; n <= all.length; n++) {
      // Plan at each user message (a new run), as the worker would.
      if (all[n - 1]!.role !== "user") continue;
      const r = settle(all.slice(0, n), summary, budget, saved);
      summary = r.summary;
      maxPrompt = Math.max(maxPrompt, promptTokens(r.plan));
    }
    expect(maxPrompt).toBeLessThanOrEqual(budget.maxTokens);
    expect(saved.length).toBeGreaterThan(2);
    const turns = all.filter((m) => m.role === "user").length;
    expect(saved.length).toBeLessThan(turns / 4);
    saved.forEach((s, i) => {
      expect(s.fromSeq).toBe(i === 0 ? 1 : saved[i - 1]!.toSeq + 1);
      expect(s.toSeq).toBeGreaterThanOrEqual(s.fromSeq);
    });
  });

  it("folds in several rounds when the part to fold exceeds the summariser's budget", () => {
    const messages = thread(500);
    const small: ContextBudget = { maxTokens: 4000, summariserMaxTokens: 3000 };
    const saved: { fromSeq: number; toSeq: number }[] = [];
    const { plan } = settle(messages, null, small, saved);
    expect(saved.length).toBeGreaterThan(3);
    saved.forEach((s, i) => expect(s.fromSeq).toBe(i === 0 ? 1 : saved[i - 1]!.toSeq + 1));
    expect(promptTokens(plan)).toBeLessThanOrEqual(small.maxTokens);
  });

  it("never splits an assistant tool call from its results", () => {
    // A run of parallel tool results right where a cut would fall.
    const messages: ContextMessage[] = [];
    let seq = 1;
    for (let i = 0; i < 30; i++) {
      messages.push(...turn(seq, i, false));
      seq += 2;
    }
    messages.push({ seq: seq++, role: "user", content: "do many things" });
    messages.push({
      seq: seq++,
      role: "assistant",
      content: [1, 2, 3].map((k) => ({ type: "tool-call", toolCallId: `p${k}`, toolName: "t", input: {} })),
    });
    for (let k = 1; k <= 3; k++) {
      messages.push({
        seq: seq++,
        role: "tool",
        content: [
          {
            type: "tool-result",
            toolCallId: `p${k}`,
            toolName: "t",
            output: { type: "text", value: "r".repeat(1500) },
          },
        ],
      });
    }
    for (const maxTokens of [1500, 2000, 2500, 3000, 4000]) {
      const plan = planContext({ messages, summary: null, budget: { maxTokens } });
      checkPlan(messages, null, plan);
    }
  });

  it("reports fits: false when the newest group alone is over budget, and still folds the rest", () => {
    const messages = thread(40);
    messages.push({ seq: 41, role: "user", content: "z".repeat(40_000) });
    const plan = planContext({ messages, summary: null, budget: { maxTokens: 4000 } });
    expect(plan.fits).toBe(false);
    expect(plan.recentMessages.map((m) => m.seq)).toEqual([41]);
    expect(plan.toSummarise).toMatchObject({ fromSeq: 1, toSeq: 40 });

    // With nothing left to fold, the plan says so instead of looping.
    const alone = planContext({
      messages,
      summary: { toSeq: 40, summary: "s" },
      budget: { maxTokens: 4000 },
    });
    expect(alone).toMatchObject({ toSummarise: null, fits: false });
  });

  it("ignores messages the summary covers, and is deterministic", () => {
    const messages = thread(200);
    const summary = { toSeq: 120, summary: "earlier" };
    const a = planContext({ messages, summary, budget });
    const b = planContext({ messages: messages.slice(), summary: { ...summary }, budget });
    expect(a.recentMessages[0]!.seq).toBeGreaterThan(120);
    expect(JSON.stringify(b)).toBe(JSON.stringify(a));
  });

  it("refuses unordered history and nonsense budgets", () => {
    const messages = thread(5);
    expect(() => planContext({ messages: [messages[1]!, messages[0]!], summary: null, budget })).toThrow(
      RangeError,
    );
    expect(() => planContext({ messages, summary: null, budget: { maxTokens: 0 } })).toThrow(RangeError);
    expect(() =>
      planContext({ messages, summary: null, budget: { maxTokens: 100, summaryTokens: 100 } }),
    ).toThrow(RangeError);
  });
});

describe("buildSummaryRequest", () => {
  it("gives the summariser the previous summary and the folded messages as a transcript", () => {
    const messages = thread(300);
    const plan = planContext({
      messages,
      summary: { toSeq: 100, summary: "User is Ada; prefers metric units." },
      budget: { maxTokens: 4000 },
    });
    const req = buildSummaryRequest(plan.toSummarise!);
    expect(req.prompt).toContain("Previous summary (messages 1 to 100):\nUser is Ada; prefers metric units.");
    expect(req.prompt).toContain(`Messages 101 to ${plan.toSummarise!.toSeq}:`);
    expect(req.prompt).toContain("[101] ");
    expect(req.prompt).toContain("(called tool lookup with");
    expect(req.prompt).toContain("(tool lookup returned");
    expect(req.maxOutputTokens).toBe(plan.toSummarise!.summaryTokens);
    expect(req.system).toMatch(/summary/);
  });

  it("cuts very long messages", () => {
    const req = buildSummaryRequest({
      fromSeq: 1,
      toSeq: 1,
      previousSummary: null,
      messages: [{ seq: 1, role: "user", content: "q".repeat(50_000) }],
      summaryTokens: 500,
    });
    expect(req.prompt).toContain("There is no previous summary.");
    expect(req.prompt).toContain("…[truncated]");
    expect(req.prompt.length).toBeLessThan(9000);
    expect(renderSummary({ toSeq: 7, summary: "s" })).toBe(
      "Summary of the earlier conversation (messages 1 to 7):\ns",
    );
  });
});

describe("contentText", () => {
  it("flattens stored content to text", () => {
    expect(contentText("hi")).toBe("hi");
    expect(
      contentText([
        { type: "text", text: "Checking." },
        { type: "tool-call", toolCallId: "c", toolName: "get", input: { id: 1 } },
      ]),
    ).toBe('Checking.\n(called tool get with {"id":1})');
    expect(contentText("abcdef", 3)).toBe("abc …[truncated]");
  });
});
