import { AsyncLocalStorage } from "node:async_hooks";
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Span,
} from "@opentelemetry/api";
import { toTraceContext, type ClaimedRun } from "../state/types.js";
import type { RunOutcomeLabel } from "./metrics.js";
import type { Tracing } from "./tracing.js";
import { neverThrows, type StepObservation, type WorkerMetricsHooks } from "./worker-hooks.js";

/**
 * Worker spans, fed by the worker's observability hooks (the same ones the
 * metrics use; compose them with `composeWorkerHooks`):
 *
 * - one span per run *attempt* (`invoke_agent <agent>`, kind CONSUMER), a
 *   child of the trace context stored with the run at enqueue, so the caller's
 *   request and every attempt of its run share one trace; a run without a
 *   stored context starts a new trace. From claim to the run leaving this
 *   worker, with the outcome; ERROR status when the run failed.
 * - one span per step this worker *executed* (`chat <model>` for LLM steps,
 *   kind CLIENT, with token usage; `execute_tool <tool>` for tool steps),
 *   children of the attempt's span. They are created when the step has been
 *   journaled, backdated by its measured duration. Steps replayed from the
 *   journal after a crash call no hook and get no span: they did no work.
 *
 * Attribute names follow the OpenTelemetry GenAI semantic conventions
 * (`gen_ai.*`) where one exists, else `capstan.*`.
 *
 * A step hook finds its run by `StepObservation.runId` when the caller passes
 * it, else by the run the current async context belongs to (`runScope`,
 * which the worker wraps around each run's execution). Every hook is cheap
 * and never throws.
 */
export interface WorkerTracing {
  hooks: Pick<WorkerMetricsHooks, "onClaim" | "onRunEnd" | "onStep" | "onModelRetry" | "onFencedWrite">;
  /** For `WorkerDeps.runScope`: binds `fn`'s async work to `run`. */
  runScope: <T>(run: ClaimedRun, fn: () => Promise<T>) => Promise<T>;
  /** Run spans not yet ended (tests, leak checks). */
  openRuns(): number;
}

/** Literal GenAI semantic-convention keys (still "incubating" upstream, so not imported). */
const GEN_AI = {
  operation: "gen_ai.operation.name",
  agentName: "gen_ai.agent.name",
  conversationId: "gen_ai.conversation.id",
  provider: "gen_ai.provider.name",
  requestModel: "gen_ai.request.model",
  inputTokens: "gen_ai.usage.input_tokens",
  outputTokens: "gen_ai.usage.output_tokens",
  toolName: "gen_ai.tool.name",
} as const;

export function tracingHooks(tracing: Tracing, opts: { now?: () => number } = {}): WorkerTracing {
  const now = opts.now ?? Date.now;
  const spans = new Map<string, Span>();
  const current = new AsyncLocalStorage<string>();
  const spanOf = (runId: string | undefined) => spans.get(runId ?? current.getStore() ?? "");
  const safe = neverThrows;

  return {
    hooks: {
      onClaim: safe((run: ClaimedRun) => {
        const parent = run.traceContext ? tracing.extract({ ...run.traceContext }) : ROOT_CONTEXT;
        // A resumed run stays in the trace that created it; the resume request is linked.
        const resumedBy = toTraceContext(run.resume?.trace);
        const link = resumedBy ? trace.getSpanContext(tracing.extract({ ...resumedBy })) : undefined;
        const span = tracing.tracer.startSpan(
          `invoke_agent ${run.agent}`,
          {
            kind: SpanKind.CONSUMER,
            ...(link ? { links: [{ context: link, attributes: { "capstan.link": "resume" } }] } : {}),
            attributes: {
              [GEN_AI.operation]: "invoke_agent",
              [GEN_AI.agentName]: run.agent,
              [GEN_AI.conversationId]: run.threadId,
              "capstan.run.id": run.id,
              "capstan.thread.id": run.threadId,
              "capstan.tenant.id": run.tenantId,
              "capstan.agent": run.agent,
              "capstan.run.attempt": run.attempts,
              "capstan.run.epoch": run.lease.epoch,
              "capstan.worker.id": run.lease.workerId,
              // queued_at is the database clock: clamp the skew.
              "capstan.run.pickup_ms": Math.max(0, now() - run.queuedAt.getTime()),
            },
          },
          parent,
        );
        // A second claim of the same run by this worker (after a release) replaces the first.
        spans.get(run.id)?.end();
        spans.set(run.id, span);
      }),
      onRunEnd: safe((run: ClaimedRun, outcome: RunOutcomeLabel) => {
        const span = spans.get(run.id);
        if (!span) return;
        spans.delete(run.id);
        span.setAttribute("capstan.run.outcome", outcome);
        if (outcome === "failed") span.setStatus({ code: SpanStatusCode.ERROR, message: "run failed" });
        span.end();
      }),
      onStep: safe((s: StepObservation) => {
        const run = spanOf(s.runId);
        if (!run) return;
        const end = now();
        const attributes: Attributes = { "capstan.step.kind": s.kind, "capstan.agent": s.agent };
        if (s.stepNo !== undefined) attributes["capstan.step.no"] = s.stepNo;
        let name: string;
        let kind: SpanKind;
        if (s.kind === "llm") {
          kind = SpanKind.CLIENT;
          attributes[GEN_AI.operation] = "chat";
          const label = s.model;
          let model: string | undefined;
          if (label) {
            const colon = label.indexOf(":");
            model = colon > 0 ? label.slice(colon + 1) : label;
            if (colon > 0) attributes[GEN_AI.provider] = label.slice(0, colon);
            attributes[GEN_AI.requestModel] = model;
            attributes["capstan.model"] = label;
          }
          if (s.usage) {
            attributes[GEN_AI.inputTokens] = s.usage.inputTokens;
            attributes[GEN_AI.outputTokens] = s.usage.outputTokens;
          }
          name = model ? `chat ${model}` : "chat";
        } else {
          kind = SpanKind.INTERNAL;
          attributes[GEN_AI.operation] = "execute_tool";
          if (s.toolName) attributes[GEN_AI.toolName] = s.toolName;
          name = s.toolName ? `execute_tool ${s.toolName}` : "execute_tool";
        }
        const span = tracing.tracer.startSpan(
          name,
          { kind, attributes, startTime: end - Math.max(0, s.ms) },
          trace.setSpan(ROOT_CONTEXT, run),
        );
        span.end(end);
      }),
      onModelRetry: safe((info: { status?: number | undefined }) => {
        spanOf(undefined)?.addEvent("model.retry", info.status === undefined ? {} : { status: info.status });
      }),
      onFencedWrite: safe(() => {
        spanOf(undefined)?.addEvent("lease.fenced");
      }),
    },
    runScope: (run, fn) => current.run(run.id, fn),
    openRuns: () => spans.size,
  };
}

/**
 * Several hook sets as one: each hook calls every set's implementation in
 * order, and a throwing one cannot stop the others (or the run).
 */
export function composeWorkerHooks(...sets: Partial<WorkerMetricsHooks>[]): Partial<WorkerMetricsHooks> {
  const out: Record<string, (...args: unknown[]) => void> = {};
  for (const set of sets) {
    for (const [name, fn] of Object.entries(set) as [string, unknown][]) {
      if (typeof fn !== "function") continue;
      const prev = out[name];
      const call = (...args: unknown[]): void => {
        try {
          (fn as (...a: unknown[]) => void)(...args);
        } catch {
          // Observability must never fail a run.
        }
      };
      out[name] = prev
        ? (...args) => {
            prev(...args);
            call(...args);
          }
        : call;
    }
  }
  return out;
}
