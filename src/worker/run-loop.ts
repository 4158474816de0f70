import type { LanguageModel, ModelMessage, ToolSet } from "ai";
import type { AgentDefinition } from "../agent/types.js";
import { LeaseLostError, type RunErrorCode } from "../errors.js";
import type { Logger } from "../logger.js";
import type { Db } from "../state/db.js";
import { readJournal } from "../state/journal.js";
import { readHistory } from "../state/threads.js";
import { latestSummary } from "../state/summaries.js";
import { boundHistory, isSummaryStep, type BoundedHistory } from "./context-step.js";
import type { ClaimedRun, NewMessage, RunError, Step } from "../state/types.js";
import { assistantMessage, historyToModelMessages, toolMessage, type LlmResponse } from "./messages.js";
import { ModelError, type RetryPolicy } from "./model-call.js";
import { meteredCall } from "./metered-call.js";
import { contentText } from "../agent/context.js";
import { recallForPrompt, renderRecalled } from "../agent/memory-tools.js";
import { memoryNamespace } from "../agent/memory-namespace.js";
import type { RunServices } from "./services.js";
import { isCapstanError } from "../errors.js";
import { isDbOutage } from "./db-retry.js";
import {
  readRetried,
  writeFinish,
  writeLlmStep,
  writeRelease,
  writeRunStarted,
  writeSuspend,
} from "./run-writes.js";
import type { RunPublisher } from "./publisher.js";
import { runToolStep, type ToolStepResult } from "./tool-step.js";
import { modelLabel } from "../agent/models.js";
import type { WorkerMetricsHooks } from "../observability/worker-hooks.js";

export interface LoadedAgent {
  def: AgentDefinition;
  model: LanguageModel;
  /** Tool schemas for the model (no execute functions). */
  tools: ToolSet;
}

export interface RunContext {
  db: Db;
  run: ClaimedRun;
  agent: LoadedAgent;
  publisher: RunPublisher;
  /** Aborts on cancel, lease loss, or the end of the shutdown grace period. */
  signal: AbortSignal;
  /** True once a graceful shutdown began: hand the run off at the next step boundary. */
  draining: () => boolean;
  logger: Logger;
  workerId: string;
  retry?: RetryPolicy;
  hooks: Partial<WorkerMetricsHooks>;
  services: RunServices;
  /**
   * False once this worker can no longer be sure it holds the run's lease
   * (no successful heartbeat in time): non-pure tools must not start then.
   * Absent: assumed true (embedded tests driving the loop directly).
   */
  leaseValid?: () => boolean;
}

export type RunOutcome = "succeeded" | "failed" | "waiting" | "released" | "aborted";

/** A run-level failure with a stable code (limits, model errors). */
class RunFailure extends Error {
  constructor(readonly runError: RunError) {
    super(runError.message);
  }
}

/**
 * Execute (or resume) one claimed run. The loop is a pure function of the
 * thread history up to the run's input, the agent, and the journal: steps
 * already journaled are replayed, never re-requested; the first missing
 * step is executed. Step numbers are deterministic: an LLM step k is
 * followed by its tool calls at k+1…k+n.
 */
export async function executeRun(ctx: RunContext): Promise<RunOutcome> {
  const { db, run, publisher } = ctx;
  try {
    const upto = run.inputSeq ?? undefined;
    // With bounded context, history before the latest summary is never read.
    const { summary, history, steps } = await readRetried(ctx, "run state", async () => {
      const summary = ctx.agent.def.context ? await latestSummary(db, run.threadId, upto) : null;
      const [history, steps] = await Promise.all([
        readHistory(db, run.threadId, upto, summary?.toSeq),
        readJournal(db, run.id),
      ]);
      return { summary, history, steps };
    });
    const context: BoundedHistory | null = ctx.agent.def.context ? { history, summary } : null;
    const journal = new Map<number, Step>(steps.map((s) => [s.stepNo, s]));
    await publisher.coarse(
      await writeRunStarted(ctx, [
        { type: "run.started", data: { run_id: run.id, attempt: run.attempts, worker_id: ctx.workerId } },
      ]),
    );

    const base: ModelMessage[] = context ? [] : historyToModelMessages(history);
    /** Messages this run produced (assistant turns and tool results), in order. */
    const own: ModelMessage[] = [];
    const produced: NewMessage[] = [];
    const usage = { ...run.usage };
    const limits = ctx.agent.def.limits;
    const since = run.resume ? run.queuedAt : (run.startedAt ?? new Date());
    const deadline = since.getTime() + limits.wallTimeMs;
    let stepNo = 0;

    for (;;) {
      let response: LlmResponse;
      const journaled = journal.get(stepNo);
      if (isSummaryStep(journaled)) {
        // Its summary was saved with it and is already in `context`.
        stepNo++;
        continue;
      }
      if (journaled?.kind === "llm") {
        response = journaled.output as LlmResponse;
      } else {
        if (ctx.draining()) return await handOff(ctx);
        if (stepNo >= limits.maxSteps)
          fail("max_steps_exceeded", `the run reached its limit of ${limits.maxSteps} steps`);
        if (usage.inputTokens + usage.outputTokens >= limits.maxTokens) {
          fail(
            "max_tokens_exceeded",
            `the run used ${usage.inputTokens + usage.outputTokens} tokens, over its limit of ${limits.maxTokens}`,
          );
        }
        if (Date.now() >= deadline)
          fail("wall_time_exceeded", `the run exceeded its wall time of ${limits.wallTimeMs} ms`);
        let prompt: ModelMessage[] = [...base, ...own];
        let preamble: string | null = null;
        if (context) {
          const b = await withWallTime(ctx, deadline, (signal) =>
            boundHistory(ctx, context, { stepNo, runMessages: own, deadline, signal }),
          );
          stepNo = b.stepNo;
          usage.inputTokens += b.usage.inputTokens;
          usage.outputTokens += b.usage.outputTokens;
          if (stepNo >= limits.maxSteps)
            fail("max_steps_exceeded", `the run reached its limit of ${limits.maxSteps} steps`);
          prompt = [...historyToModelMessages(b.messages), ...own];
          preamble = b.preamble;
        }
        const r = await llmStep(ctx, stepNo, prompt, deadline, preamble);
        response = r;
        usage.inputTokens += r.usage.inputTokens;
        usage.outputTokens += r.usage.outputTokens;
      }
      const assistant = assistantMessage(response);
      own.push(assistant);
      produced.push({ role: "assistant", content: assistant.content });
      stepNo++;

      if (response.toolCalls.length === 0) {
        await publisher.drain();
        await publisher.coarse(await writeFinish(ctx, { status: "succeeded", messages: produced }));
        return "succeeded";
      }
      if (stepNo + response.toolCalls.length > limits.maxSteps) {
        fail("max_steps_exceeded", `the run reached its limit of ${limits.maxSteps} steps`);
      }
      if (ctx.draining() && response.toolCalls.some((_, i) => !journal.has(stepNo + i)))
        return await handOff(ctx);

      // allSettled, not all: a failing call must not leave its siblings running unobserved
      // (the run would end, and its slot be reused, while a side effect is still in flight).
      const settled = await Promise.allSettled(
        response.toolCalls.map((call, i) => runToolStep(ctx, stepNo + i, call, journal.get(stepNo + i))),
      );
      const failedCall = settled.find((s) => s.status === "rejected");
      if (failedCall) throw failedCall.reason;
      const results = settled.map((s) => (s as PromiseFulfilledResult<ToolStepResult>).value);
      const wait = results.find((r) => r.kind === "wait");
      if (wait?.kind === "wait") {
        await publisher.coarse(await writeSuspend(ctx, wait.wait));
        return "waiting";
      }
      const tm = toolMessage(
        response.toolCalls.map((call, i) => {
          const r = results[i]!;
          return {
            toolCallId: call.toolCallId,
            toolName: call.toolName,
            outcome: r.kind === "done" ? r.outcome : { ok: false, error: "not run" },
          };
        }),
      );
      own.push(tm);
      produced.push({ role: "tool", content: tm.content });
      stepNo += response.toolCalls.length;
    }
  } catch (err) {
    return handleRunError(ctx, err);
  }
}

function fail(code: RunErrorCode, message: string): never {
  throw new RunFailure({ code, message });
}

/** Runs `fn` with a signal that also aborts at the run's wall-time deadline, reported as such. */
async function withWallTime<T>(
  ctx: RunContext,
  deadline: number,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const timeout = AbortSignal.timeout(Math.max(1, deadline - Date.now()));
  try {
    return await fn(AbortSignal.any([ctx.signal, timeout]));
  } catch (err) {
    if (timeout.aborted && !ctx.signal.aborted) {
      fail("wall_time_exceeded", `the run exceeded its wall time of ${ctx.agent.def.limits.wallTimeMs} ms`);
    }
    throw err;
  }
}

async function handOff(ctx: RunContext): Promise<RunOutcome> {
  await ctx.publisher.drain();
  await writeRelease(ctx);
  ctx.logger.info("run handed off (shutdown)");
  return "released";
}

async function handleRunError(ctx: RunContext, err: unknown): Promise<RunOutcome> {
  if (err instanceof LeaseLostError) ctx.hooks.onFencedWrite?.();
  if (err instanceof LeaseLostError || ctx.signal.aborted) {
    ctx.logger.info({ reason: describe(ctx.signal.reason ?? err) }, "run aborted locally");
    return "aborted";
  }
  let runError: RunError;
  if (err instanceof RunFailure) runError = err.runError;
  else if (isCapstanError(err) && ["budget_exceeded", "rate_limited", "server_busy"].includes(err.code)) {
    runError = { code: err.code as RunErrorCode, message: err.message, ...(err.details ?? {}) };
  } else if (err instanceof ModelError)
    runError = { code: "model_error", message: err.message, ...(err.status ? { status: err.status } : {}) };
  else if (isDbOutage(err)) {
    // The database stayed unreachable through the step's retries: write
    // nothing; the lease expires and another worker resumes from the journal.
    ctx.logger.warn({ err }, "run interrupted by a database outage; leaving it to lease expiry");
    return "aborted";
  } else {
    ctx.logger.error({ err }, "run failed with an unexpected error");
    runError = { code: "internal", message: describe(err) };
  }
  try {
    await ctx.publisher.drain();
    await ctx.publisher.coarse(await writeFinish(ctx, { status: "failed", error: runError }));
    // Bindings carry runId, tenantId, attempt and workerId.
    ctx.logger.warn({ error: runError }, "run failed");
    return "failed";
  } catch (finishErr) {
    if (!(finishErr instanceof LeaseLostError))
      ctx.logger.warn({ err: finishErr }, "could not record the run's failure");
    return "aborted";
  }
}

function describe(v: unknown): string {
  return v instanceof Error ? v.message : String(v);
}

async function llmStep(
  ctx: RunContext,
  stepNo: number,
  convo: ModelMessage[],
  deadline: number,
  preamble: string | null,
): Promise<LlmResponse & { usage: LlmUsage }> {
  const { run, publisher, agent } = ctx;
  const cost = ctx.services.cost;
  const label = modelLabel(agent.def.model);
  const startedAt = new Date();
  const timeout = AbortSignal.timeout(Math.max(1, deadline - Date.now()));
  const signal = AbortSignal.any([ctx.signal, timeout]);
  const recalled = await systemPrompt(ctx, convo, signal);
  const system = preamble ? `${recalled}\n\n${preamble}` : recalled;
  const journal = async (
    response: LlmResponse,
    usage: LlmUsage,
    cache?: { hit: boolean; tokensSaved: number },
  ) => {
    const events = [
      ...(response.text
        ? [
            {
              type: "message.completed",
              data: { run_id: run.id, step_no: stepNo, role: "assistant", content: response.text },
            },
          ]
        : []),
      {
        type: "step.completed",
        data: {
          run_id: run.id,
          step_no: stepNo,
          kind: "llm",
          usage: { input_tokens: usage.inputTokens, output_tokens: usage.outputTokens },
          tool_calls: response.toolCalls.map((c) => c.toolName),
          ...(cache?.hit ? { cache: "hit" } : {}),
        },
      },
    ];
    await publisher.drain();
    await publisher.coarse(
      await writeLlmStep(
        ctx,
        {
          stepNo,
          model: label,
          request: {
            messages: convo.length,
            tools: Object.keys(agent.tools),
            ...(cache?.hit ? { cache: "hit" } : {}),
          },
          response,
          usage,
          startedAt,
          ...(cache ? { cache } : {}),
        },
        events,
      ),
    );
  };

  // 1. The response cache (opt-in, deterministic agents only): a hit costs nothing.
  const lookup = cost
    ? await cost.llmCache.lookup({ tenantId: run.tenantId, agent: agent.def, system, messages: convo })
    : undefined;
  if (lookup?.enabled)
    ctx.hooks.onCache?.({ cache: "llm", hit: !!lookup.hit, model: label, tokensSaved: lookup.tokensSaved });
  if (lookup?.hit) {
    const usage = { inputTokens: 0, outputTokens: 0 };
    await journal(lookup.hit.response, usage, { hit: true, tokensSaved: lookup.tokensSaved });
    return { ...lookup.hit.response, usage };
  }

  // 2. Budget, provider capacity and the call itself (src/worker/metered-call.ts).
  try {
    const result = await meteredCall(ctx, {
      stepNo,
      system,
      messages: convo,
      tools: agent.tools,
      estimableTools: agent.def.tools,
      ...(agent.def.maxOutputTokens !== undefined ? { maxOutputTokens: agent.def.maxOutputTokens } : {}),
      deadline,
      signal,
      onDelta: (text) => publisher.delta(stepNo, text),
      onRetry: (info) => {
        publisher.flushText();
        void publisher.ephemeral("message.reset", { run_id: run.id, step_no: stepNo, ...info });
      },
      commit: async (r) => {
        publisher.flushText();
        await journal(r.response, r.usage);
      },
    });
    await lookup?.store(result);
    ctx.hooks.onStep?.({
      agent: run.agent,
      kind: "llm",
      ms: Date.now() - startedAt.getTime(),
      runId: run.id,
      stepNo,
      model: label,
      usage: result.usage,
    });
    return { ...result.response, usage: result.usage };
  } catch (err) {
    if (timeout.aborted && !ctx.signal.aborted) {
      fail("wall_time_exceeded", `the run exceeded its wall time of ${agent.def.limits.wallTimeMs} ms`);
    }
    throw err;
  } finally {
    // A call that failed for good: its unsent partial text is not worth sending.
    publisher.dropText();
  }
}

type LlmUsage = { inputTokens: number; outputTokens: number; cachedInputTokens?: number };

/**
 * The system prompt of one call: the agent's instructions plus, when the
 * agent recalls long-term memory, the memories nearest to the latest user
 * message. Recall is a read: the journaled LLM response makes replays
 * independent of what memory holds later.
 */
const recalledPrompts = new WeakMap<RunContext, { query: string; system: string }>();

async function systemPrompt(ctx: RunContext, convo: ModelMessage[], signal: AbortSignal): Promise<string> {
  const recall = ctx.agent.def.memory?.recall;
  const memory = ctx.services.memory;
  if (!recall || !memory) return ctx.agent.def.instructions;
  const lastUser = [...convo].reverse().find((m) => m.role === "user");
  const query = lastUser ? contentText(lastUser.content) : "";
  // Once per run (the query is the run's input on every step): no embedding and search per step,
  // and a system prompt that stays the same, which provider prompt caches and the LLM cache key
  // need. Memories the run writes meanwhile are in its conversation already.
  const memo = recalledPrompts.get(ctx);
  if (memo?.query === query) return memo.system;
  try {
    const matches = await recallForPrompt({
      db: ctx.db,
      embedder: memory.embedder,
      tenantId: ctx.run.tenantId,
      namespace: memoryNamespace(recall.namespace, ctx.run.threadId),
      query,
      k: recall.k,
      signal,
    });
    const block = renderRecalled(matches);
    const system = block ? `${ctx.agent.def.instructions}\n\n${block}` : ctx.agent.def.instructions;
    recalledPrompts.set(ctx, { query, system });
    return system;
  } catch (err) {
    if (signal.aborted) throw err;
    // Memory is an aid, not a dependency: answer without it rather than fail.
    ctx.logger.warn({ err }, "memory recall failed; continuing without recalled memories");
    return ctx.agent.def.instructions;
  }
}
