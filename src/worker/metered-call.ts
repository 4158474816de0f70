import type { ModelMessage, ToolSet } from "ai";
import { estimateLlmTokens, type EstimableTool } from "../cost/estimate.js";
import { limitedRetrySleep, type ProviderPermit } from "../cost/provider-limits.js";
import { modelLabel } from "../agent/models.js";
import { isCapstanError } from "../errors.js";
import { callModel, type ModelCallResult } from "./model-call.js";
import type { RunContext } from "./run-loop.js";

export interface MeteredCallInput {
  stepNo: number;
  system: string;
  messages: ModelMessage[];
  /** Schemas sent to the model (no execute functions). */
  tools: ToolSet;
  /** The same tools as the agent defines them, for the token estimate. */
  estimableTools?: Readonly<Record<string, EstimableTool>>;
  maxOutputTokens?: number;
  deadline: number;
  signal: AbortSignal;
  onDelta?: (text: string) => void;
  onRetry?: (info: { attempt: number; delayMs: number; error: string; status?: number }) => void;
  /**
   * Journals the result. It runs after the provider permit is settled and
   * before the budget reservation is: the budget's Postgres fallback counts
   * journaled usage, so settling first would briefly under-count.
   */
  commit: (result: ModelCallResult) => Promise<void>;
}

/**
 * One model call under the run's cost controls, in this order: a budget
 * reservation (the tenant's and the run's, refused with `budget_exceeded`),
 * then shared provider capacity (RPM/TPM, waiting up to the deadline), then
 * the call with retries (a 429 sets the shared cool-down), then `commit`.
 * Without cost services it is a plain `callModel` + `commit`.
 */
export async function meteredCall(ctx: RunContext, input: MeteredCallInput): Promise<ModelCallResult> {
  const { run, agent } = ctx;
  const cost = ctx.services.cost;
  const label = modelLabel(agent.def.model);
  const { signal } = input;
  const estimate = cost
    ? estimateLlmTokens({
        system: input.system,
        messages: input.messages,
        ...(input.estimableTools ? { tools: input.estimableTools } : {}),
        ...(input.maxOutputTokens !== undefined ? { maxOutputTokens: input.maxOutputTokens } : {}),
        defaultMaxOutputTokens: cost.defaultMaxOutputTokens,
      })
    : undefined;
  const reservation =
    cost && estimate
      ? await cost.budget.reserve({
          tenantId: run.tenantId,
          runId: run.id,
          stepNo: input.stepNo,
          estimate,
          signal,
        })
      : undefined;
  let permit: ProviderPermit | undefined;
  let result: ModelCallResult | undefined;
  try {
    permit =
      cost && estimate
        ? await cost.limiter.acquire({
            model: label,
            tokens: estimate.max,
            signal,
            maxWaitMs: Math.max(0, input.deadline - Date.now()),
          })
        : undefined;
    const maxOutputTokens = reservation?.maxOutputTokens ?? input.maxOutputTokens;
    result = await callModel({
      model: agent.model,
      system: input.system,
      messages: input.messages,
      tools: input.tools,
      signal,
      ...(agent.def.temperature !== undefined ? { temperature: agent.def.temperature } : {}),
      ...(maxOutputTokens !== undefined ? { maxOutputTokens } : {}),
      ...(ctx.retry ? { retry: ctx.retry } : {}),
      ...(permit ? { sleep: limitedRetrySleep(permit) } : {}),
      onDelta: input.onDelta ?? (() => {}),
      onRetry: (info) => {
        ctx.hooks.onModelRetry?.({ status: info.status });
        if (info.status === 429 && cost) void cost.limiter.cooldown(label, info.delayMs);
        // `retry`, not `attempt`: the run logger's bindings carry the run's attempt.
        const { attempt: retry, ...rest } = info;
        ctx.logger.warn({ stepNo: input.stepNo, retry, ...rest }, "model call failed; retrying");
        input.onRetry?.(info);
      },
    });
    const { usage } = result;
    await permit?.settle(usage.inputTokens + usage.outputTokens);
    await input.commit(result);
    return result;
  } catch (err) {
    if (permit && !result) await permit.release();
    // No capacity within the wait: the shared provider window refused the call.
    if (isCapstanError(err, "rate_limited")) ctx.hooks.onRateLimited?.("provider");
    throw err;
  } finally {
    if (reservation) await (result ? reservation.settle(result.usage) : reservation.release());
  }
}
