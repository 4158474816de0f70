import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from "@opentelemetry/api";
import { ExportResultCode } from "@opentelemetry/core";
import { InMemorySpanExporter, type ReadableSpan, type SpanExporter } from "@opentelemetry/sdk-trace";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import { resolveSettings } from "../../src/config/config.js";
import { silentLogger } from "../../src/logger.js";
import { composeWorkerHooks, tracingHooks } from "../../src/observability/tracing-hooks.js";
import { createTracing, type Tracing } from "../../src/observability/tracing.js";
import type { StepObservation, WorkerMetricsHooks } from "../../src/observability/worker-hooks.js";
import type { ClaimedRun, TraceContext } from "../../src/state/types.js";

/** Unit tests of the tracing object and the worker's tracing hooks, on an in-memory exporter. */

function setup(env: Record<string, string> = {}): { tracing: Tracing; exporter: InMemorySpanExporter } {
  const exporter = new InMemorySpanExporter();
  const settings = resolveSettings({ env: { CAPSTAN_TRACING: "otlp", ...env } }).tracing;
  const tracing = createTracing(settings, silentLogger(), { role: "worker", exporter })!;
  return { tracing, exporter };
}

async function finished(t: { tracing: Tracing; exporter: InMemorySpanExporter }): Promise<ReadableSpan[]> {
  await t.tracing.forceFlush();
  return t.exporter.getFinishedSpans();
}

const TRACE = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT = "00f067aa0ba902b7";

function claimed(id: string, traceContext: TraceContext | null): ClaimedRun {
  return {
    id,
    tenantId: "tenant-1",
    threadId: "thread-1",
    agent: "support",
    attempts: 2,
    queuedAt: new Date(Date.now() - 50),
    lease: { runId: id, epoch: 2, workerId: "w1" },
    traceContext,
  } as ClaimedRun;
}

describe("createTracing", () => {
  it("is undefined when disabled: nothing is built", () => {
    expect(createTracing(resolveSettings().tracing, silentLogger())).toBeUndefined();
  });

  it("extracts and injects W3C trace context; malformed values start a new trace", async () => {
    const t = setup();
    const parent = t.tracing.extract({
      traceparent: `00-${TRACE}-${PARENT}-01`,
      tracestate: "congo=t61rcWkgMzE",
    });
    expect(trace.getSpanContext(parent)).toMatchObject({ traceId: TRACE, spanId: PARENT, isRemote: true });
    const span = t.tracing.tracer.startSpan("child", {}, parent);
    const carrier = t.tracing.inject(trace.setSpan(parent, span))!;
    expect(carrier.traceparent).toBe(`00-${TRACE}-${span.spanContext().spanId}-01`);
    expect(carrier.tracestate).toBe("congo=t61rcWkgMzE");
    span.end();

    for (const bad of ["garbage", `00-${"0".repeat(32)}-${PARENT}-01`, `00-${TRACE}-${PARENT}`]) {
      expect(trace.getSpanContext(t.tracing.extract({ traceparent: bad }))).toBeUndefined();
    }
    expect(t.tracing.inject(ROOT_CONTEXT)).toBeUndefined();
    await t.tracing.shutdown();
    await t.tracing.shutdown(); // idempotent
  });

  it("samples new traces by ratio but follows a caller's decision", async () => {
    const t = setup({ OTEL_TRACES_SAMPLER_ARG: "0" });
    t.tracing.tracer.startSpan("root").end();
    const sampled = t.tracing.extract({ traceparent: `00-${TRACE}-${PARENT}-01` });
    t.tracing.tracer.startSpan("continued", {}, sampled).end();
    const notSampled = t.tracing.extract({ traceparent: `00-${TRACE}-${PARENT}-00` });
    const dropped = t.tracing.tracer.startSpan("dropped", {}, notSampled);
    // The unsampled decision still propagates, so the worker drops the run's spans too.
    expect(t.tracing.inject(trace.setSpan(notSampled, dropped))?.traceparent).toMatch(/-00$/);
    dropped.end();
    expect((await finished(t)).map((s) => s.name)).toEqual(["continued"]);
    await t.tracing.shutdown();
  });

  it("survives a failing exporter and bounds shutdown", async () => {
    const failing: SpanExporter = {
      export: (_spans, done) => done({ code: ExportResultCode.FAILED, error: new Error("collector down") }),
      shutdown: () => new Promise(() => {}), // never settles
    };
    const settings = resolveSettings({
      env: { CAPSTAN_TRACING: "otlp", OTEL_EXPORTER_OTLP_TIMEOUT: "100" },
    }).tracing;
    type Line = { level: number; msg: string; dropped?: number };
    const lines: Line[] = [];
    const logger = pino({ level: "info" }, { write: (l: string) => void lines.push(JSON.parse(l) as Line) });
    const tracing = createTracing(settings, logger, { exporter: failing })!;
    tracing.tracer.startSpan("lost").end();
    await tracing.forceFlush();
    tracing.tracer.startSpan("lost too").end();
    await tracing.forceFlush();
    // Reported once (then at most once a minute), not once per export.
    const failures = lines.filter((l) => /span export failed/.test(l.msg));
    expect(failures).toHaveLength(1);
    expect(failures[0]).toMatchObject({ level: 40, dropped: 1 });
    // The exporter's shutdown never settles: only the timeout can end ours, and it is logged.
    await tracing.shutdown();
    expect(lines.some((l) => /tracing shutdown timed out/.test(l.msg))).toBe(true);
  });
});

describe("tracingHooks", () => {
  it("makes a span per attempt under the stored context, with step spans under it", async () => {
    const t = setup();
    const wt = tracingHooks(t.tracing);
    const run = claimed("run-1", { traceparent: `00-${TRACE}-${PARENT}-01` });
    wt.hooks.onClaim(run);
    await wt.runScope(run, async () => {
      await Promise.resolve();
      // No runId: found through the run scope.
      wt.hooks.onStep({
        agent: "support",
        kind: "llm",
        ms: 40,
        model: "openai:gpt-4o-mini",
        usage: { inputTokens: 120, outputTokens: 30 },
      });
      wt.hooks.onModelRetry({ status: 429 });
    });
    // Outside the scope, with the fields the call sites can pass.
    wt.hooks.onStep({ agent: "support", kind: "tool", ms: 5, runId: "run-1", stepNo: 1, toolName: "refund" });
    // Unknown runs are ignored.
    wt.hooks.onStep({ agent: "support", kind: "tool", ms: 5, runId: "nope" });
    expect(wt.openRuns()).toBe(1);
    wt.hooks.onRunEnd(run, "failed", 100);
    expect(wt.openRuns()).toBe(0);

    const spans = await finished(t);
    const runSpan = spans.find((s) => s.name === "invoke_agent support")!;
    expect(runSpan.kind).toBe(SpanKind.CONSUMER);
    expect(runSpan.spanContext().traceId).toBe(TRACE);
    expect(runSpan.parentSpanContext?.spanId).toBe(PARENT);
    expect(runSpan.attributes).toMatchObject({
      "capstan.run.id": "run-1",
      "capstan.run.attempt": 2,
      "capstan.run.outcome": "failed",
      "capstan.tenant.id": "tenant-1",
      "capstan.thread.id": "thread-1",
    });
    expect(runSpan.status.code).toBe(SpanStatusCode.ERROR);
    expect(runSpan.events.map((e) => [e.name, e.attributes])).toEqual([["model.retry", { status: 429 }]]);
    expect(runSpan.resource.attributes["capstan.role"]).toBe("worker");

    const chat = spans.find((s) => s.name === "chat gpt-4o-mini")!;
    expect(chat.kind).toBe(SpanKind.CLIENT);
    expect(chat.parentSpanContext?.spanId).toBe(runSpan.spanContext().spanId);
    expect(chat.attributes).toMatchObject({
      "gen_ai.provider.name": "openai",
      "gen_ai.request.model": "gpt-4o-mini",
      "gen_ai.usage.input_tokens": 120,
      "gen_ai.usage.output_tokens": 30,
    });
    // Backdated by the step's duration.
    const ms = (s: ReadableSpan) =>
      (s.endTime[0] - s.startTime[0]) * 1e3 + (s.endTime[1] - s.startTime[1]) / 1e6;
    expect(ms(chat)).toBeCloseTo(40, 0);

    const tool = spans.find((s) => s.name === "execute_tool refund")!;
    expect(tool.parentSpanContext?.spanId).toBe(runSpan.spanContext().spanId);
    expect(tool.attributes).toMatchObject({ "capstan.step.no": 1, "gen_ai.tool.name": "refund" });
    expect(spans).toHaveLength(3);
    await t.tracing.shutdown();
  });

  it("starts a new trace for a run stored without trace context", async () => {
    const t = setup();
    const wt = tracingHooks(t.tracing);
    const run = claimed("run-2", null);
    wt.hooks.onClaim(run);
    wt.hooks.onRunEnd(run, "succeeded", 10);
    const [span] = await finished(t);
    expect(span?.parentSpanContext).toBeUndefined();
    expect(span?.status.code).toBe(SpanStatusCode.UNSET);
    await t.tracing.shutdown();
  });
});

describe("resumed runs", () => {
  it("stay in the creating trace and link the resume request", async () => {
    const t = setup();
    const wt = tracingHooks(t.tracing);
    const RESUME_TRACE = "0af7651916cd43dd8448eb211c80319c";
    const RESUME_SPAN = "b7ad6b7169203331";
    const run = {
      ...claimed("run-3", { traceparent: `00-${TRACE}-${PARENT}-01` }),
      resume: { decision: "approve", trace: { traceparent: `00-${RESUME_TRACE}-${RESUME_SPAN}-01` } },
    } as ClaimedRun;
    wt.hooks.onClaim(run);
    wt.hooks.onRunEnd(run, "succeeded", 10);
    const [span] = await finished(t);
    expect(span?.spanContext().traceId).toBe(TRACE);
    expect(span?.links.map((l) => [l.context.traceId, l.context.spanId, l.attributes])).toEqual([
      [RESUME_TRACE, RESUME_SPAN, { "capstan.link": "resume" }],
    ]);
    await t.tracing.shutdown();
  });
});

describe("composeWorkerHooks", () => {
  it("calls every set in order and isolates a throwing hook", () => {
    const calls: string[] = [];
    const a: Partial<WorkerMetricsHooks> = {
      onStep: (s: StepObservation) => {
        calls.push(`a:${s.kind}`);
        throw new Error("boom");
      },
      onFencedWrite: () => calls.push("a:fenced"),
    };
    const b: Partial<WorkerMetricsHooks> = { onStep: (s: StepObservation) => calls.push(`b:${s.kind}`) };
    const hooks = composeWorkerHooks(a, b);
    hooks.onStep?.({ agent: "x", kind: "tool", ms: 1 });
    hooks.onFencedWrite?.();
    expect(calls).toEqual(["a:tool", "b:tool", "a:fenced"]);
    expect(hooks.onClaim).toBeUndefined();
  });
});
