/**
 * Bounded context in the reasoning loop (agent option `context: { maxTokens }`).
 *
 * Before each LLM call that is not in the journal, the thread history the
 * run sees (messages up to its input) is planned against the budget
 * (src/agent/context.ts). When it does not fit, the older part is folded
 * into a summary by a *summarisation step*: an LLM step journaled like any
 * other (kind `llm`, input `{ purpose: "summary", from_seq, to_seq }`), whose
 * transaction also saves the summary with the seq range it covers
 * (src/state/summaries.ts). The prompt is then the summary (in the system
 * prompt) + the recent history + the messages this run produced.
 *
 * Crash safety: a summarisation step consumes a step number; on replay it is
 * skipped, and since its summary was saved with it, planning again gives the
 * same prompt without summarising twice. A crash while the summariser is
 * being called saves nothing, so the resumed run asks again (one call lost,
 * never two summaries). Thread history is never rewritten.
 */
import type { ModelMessage } from "ai";
import {
  buildSummaryRequest,
  estimateMessageTokens,
  estimateTextTokens,
  planContext,
  renderSummary,
  type ContextPlan,
} from "../agent/context.js";
import { modelLabel } from "../agent/models.js";
import { writeLlmStep } from "./run-writes.js";
import { MAX_SUMMARY_BYTES, type ThreadSummary } from "../state/summaries.js";
import type { Message, Step } from "../state/types.js";
import { meteredCall } from "./metered-call.js";
import type { RunContext } from "./run-loop.js";

/** The history budget never drops below this share of `maxTokens`, however long the run's own turn. */
const MIN_HISTORY_SHARE = 0.25;

export interface BoundedHistory {
  /** Thread messages after `summary.toSeq`, up to the run's input. */
  history: Message[];
  summary: ThreadSummary | null;
}

export interface BoundedPrompt {
  /** Rendered summary for the system prompt, or null. */
  preamble: string | null;
  /** History messages to send before the run's own messages. */
  messages: Message[];
  /** The step number for the LLM call (after any summarisation steps). */
  stepNo: number;
  /** Tokens the summarisation steps used. */
  usage: { inputTokens: number; outputTokens: number };
  plan: ContextPlan<Message, ThreadSummary>;
}

/** True for a journaled summarisation step (replay skips it). */
export function isSummaryStep(step: Step | undefined): boolean {
  return (
    step?.kind === "llm" &&
    typeof step.input === "object" &&
    step.input !== null &&
    (step.input as { purpose?: unknown }).purpose === "summary"
  );
}

/**
 * Plans the prompt for the LLM step at `stepNo`, running (and journaling)
 * summarisation steps first when the history does not fit. Mutates `state`
 * to the new summary and the remaining history.
 */
export async function boundHistory(
  ctx: RunContext,
  state: BoundedHistory,
  opts: { stepNo: number; runMessages: ModelMessage[]; deadline: number; signal: AbortSignal },
): Promise<BoundedPrompt> {
  const max = ctx.agent.def.context!.maxTokens;
  const own =
    estimateTextTokens(ctx.agent.def.instructions) +
    opts.runMessages.reduce((n, m) => n + estimateMessageTokens(m), 0);
  const budget = { maxTokens: Math.max(Math.floor(max * MIN_HISTORY_SHARE), max - own) };
  let stepNo = opts.stepNo;
  const usage = { inputTokens: 0, outputTokens: 0 };
  for (;;) {
    const plan = planContext({ messages: state.history, summary: state.summary, budget });
    if (!plan.toSummarise) {
      if (!plan.fits) {
        ctx.logger.warn(
          { estimatedTokens: plan.estimatedTokens, budget: budget.maxTokens },
          "the newest turn alone exceeds the context budget; sending it whole",
        );
      }
      return {
        preamble: plan.summaryToUse ? renderSummary(plan.summaryToUse) : null,
        messages: plan.recentMessages,
        stepNo,
        usage,
        plan,
      };
    }
    if (stepNo >= ctx.agent.def.limits.maxSteps) return { ...finalPlan(plan), stepNo, usage };
    const s = plan.toSummarise;
    const req = buildSummaryRequest(s);
    const startedAt = new Date();
    let saved: ThreadSummary | null = null;
    const r = await meteredCall(ctx, {
      stepNo,
      system: req.system,
      messages: [{ role: "user", content: req.prompt }],
      tools: {},
      maxOutputTokens: req.maxOutputTokens,
      deadline: opts.deadline,
      signal: opts.signal,
      commit: async (result) => {
        const text = summaryText(result.response.text, s.fromSeq, s.toSeq);
        const range = { from_seq: s.fromSeq, to_seq: s.toSeq };
        const usageOut = {
          input_tokens: result.usage.inputTokens,
          output_tokens: result.usage.outputTokens,
        };
        await ctx.publisher.coarse(
          await writeLlmStep(
            ctx,
            {
              stepNo,
              model: modelLabel(ctx.agent.def.model),
              request: { purpose: "summary", ...range, messages: s.messages.length },
              response: { text, toolCalls: [], finishReason: result.response.finishReason },
              usage: result.usage,
              startedAt,
              summary: {
                threadId: ctx.run.threadId,
                fromSeq: s.fromSeq,
                toSeq: s.toSeq,
                summary: text,
                runId: ctx.run.id,
              },
            },
            [
              {
                type: "step.completed",
                data: {
                  run_id: ctx.run.id,
                  step_no: stepNo,
                  kind: "llm",
                  purpose: "summary",
                  ...range,
                  usage: usageOut,
                },
              },
            ],
          ),
        );
        saved = {
          threadId: ctx.run.threadId,
          fromSeq: s.fromSeq,
          toSeq: s.toSeq,
          summary: text,
          runId: ctx.run.id,
          createdAt: startedAt,
        };
      },
    });
    ctx.hooks.onStep?.({
      agent: ctx.run.agent,
      kind: "llm",
      ms: Date.now() - startedAt.getTime(),
      runId: ctx.run.id,
      stepNo,
      model: modelLabel(ctx.agent.def.model),
      usage: r.usage,
    });
    usage.inputTokens += r.usage.inputTokens;
    usage.outputTokens += r.usage.outputTokens;
    state.summary = saved;
    state.history = state.history.filter((m) => m.seq > s.toSeq);
    stepNo++;
  }
}

/** Out of steps for more summarising: send what the plan would keep (best effort). */
function finalPlan(plan: ContextPlan<Message, ThreadSummary>) {
  return {
    preamble: plan.summaryToUse ? renderSummary(plan.summaryToUse) : null,
    messages: plan.recentMessages,
    plan,
  };
}

/** The model's summary, or a marker when it returned nothing; capped to what the store accepts. */
function summaryText(text: string, fromSeq: number, toSeq: number): string {
  const t = text.trim() || `(the summariser returned no text for messages ${fromSeq} to ${toSeq})`;
  if (Buffer.byteLength(t, "utf8") <= MAX_SUMMARY_BYTES) return t;
  return Buffer.from(t, "utf8")
    .subarray(0, MAX_SUMMARY_BYTES - 4)
    .toString("utf8")
    .replace(/\uFFFD$/, "");
}
