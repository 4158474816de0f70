import { hostname } from "node:os";
import {
  defaultTextMapGetter,
  defaultTextMapSetter,
  ROOT_CONTEXT,
  type Context,
  type Tracer,
} from "@opentelemetry/api";
import { ExportResultCode, W3CTraceContextPropagator, type ExportResult } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { defaultResource, resourceFromAttributes } from "@opentelemetry/resources";
import {
  BatchSpanProcessor,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type ReadableSpan,
  type SpanExporter,
} from "@opentelemetry/sdk-trace";
import { ATTR_SERVICE_NAME } from "@opentelemetry/semantic-conventions";
import type { TracingSettings } from "../config/config.js";
import type { Logger } from "../logger.js";
import type { TraceContext } from "../state/types.js";

/**
 * OpenTelemetry tracing for one process (docs/operations.md#tracing), built from resolved
 * settings by `createTracing`. Spans are created explicitly (no
 * auto-instrumentation, nothing monkey-patched) and parents are passed
 * explicitly: nothing is registered with the global OpenTelemetry API (no
 * global provider, context manager or propagator), so several instances can
 * live in one process (tests, `capstan dev`) and other libraries' globals
 * are left alone.
 *
 * Contract: tracing never fails a request or a run. Exports are batched in
 * the background; a failing collector drops spans (reported in the log at
 * most once a minute), never blocks.
 */
export interface Tracing {
  readonly tracer: Tracer;
  /**
   * The parent context described by W3C `traceparent`/`tracestate` values
   * (HTTP headers, or a run's stored trace context). Absent or malformed
   * values give the root context: the next span starts a new trace.
   */
  extract(carrier: Readonly<Record<string, string | string[] | undefined>> | null | undefined): Context;
  /** The W3C trace context of the span in `ctx`, or undefined when it holds no valid span. */
  inject(ctx: Context): TraceContext | undefined;
  /** Export every ended span now. Never rejects: a failed export is logged (see `reportFailures`). */
  forceFlush(): Promise<void>;
  /** Flush, then stop exporting. Idempotent; bounded by the export timeout; never throws. */
  shutdown(): Promise<void>;
}

export interface TracingOptions {
  /** The process role, exported as the `capstan.role` resource attribute. */
  role?: string;
  /** Where spans go instead of OTLP/HTTP (tests). */
  exporter?: SpanExporter;
}

/** The instrumentation scope name of every Capstan span. */
export const TRACER_NAME = "capstan";

/**
 * Build the process's tracing, or return undefined when it is disabled: then
 * no SDK object, exporter or timer exists and callers skip every tracing
 * code path with one `if`.
 */
export function createTracing(
  settings: TracingSettings,
  logger: Logger,
  opts: TracingOptions = {},
): Tracing | undefined {
  if (!settings.enabled) return undefined;
  const log = logger.child({ component: "tracing" });
  const endpoint = redactUrl(settings.endpoint);
  const exporter = reportFailures(
    opts.exporter ??
      // OTLP/HTTP with JSON bodies. The library falls back to the standard
      // OTEL_EXPORTER_OTLP_* variables only for options not given here.
      new OTLPTraceExporter({
        url: settings.endpoint,
        headers: settings.headers,
        timeoutMillis: settings.exportTimeoutMs,
      }),
    log,
    endpoint,
  );
  const provider = new TracerProvider({
    resource: defaultResource().merge(
      resourceFromAttributes({
        [ATTR_SERVICE_NAME]: settings.serviceName,
        // Literal keys: these attributes are not in the stable semantic conventions export.
        "service.instance.id": `${hostname()}:${process.pid}`,
        ...(opts.role ? { "capstan.role": opts.role } : {}),
      }),
    ),
    // Parent-based: a caller's sampled flag (incoming traceparent, or the one
    // stored with a run) decides; only new traces use the ratio.
    sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(settings.sampleRatio) }),
    spanProcessors: [
      new BatchSpanProcessor({
        exporter,
        scheduledDelayMillis: settings.batchDelayMs,
        exportTimeoutMillis: settings.exportTimeoutMs,
        maxQueueSize: settings.maxQueueSize,
        maxExportBatchSize: Math.min(512, settings.maxQueueSize),
      }),
    ],
  });
  const tracer = provider.getTracer(TRACER_NAME);
  const propagator = new W3CTraceContextPropagator();
  let closing: Promise<void> | undefined;

  log.info(
    { endpoint, serviceName: settings.serviceName, sampleRatio: settings.sampleRatio },
    "tracing enabled: exporting spans over OTLP/HTTP",
  );

  return {
    tracer,
    extract(carrier) {
      return propagator.extract(ROOT_CONTEXT, carrier ?? {}, defaultTextMapGetter);
    },
    inject(ctx) {
      const out: Record<string, string> = {};
      propagator.inject(ctx, out, defaultTextMapSetter);
      const { traceparent, tracestate } = out;
      if (!traceparent) return undefined;
      return tracestate ? { traceparent, tracestate } : { traceparent };
    },
    forceFlush: () => provider.forceFlush().catch(() => undefined),
    shutdown() {
      closing ??= (async () => {
        let timer: NodeJS.Timeout | undefined;
        const bound = new Promise<"timeout">((resolve) => {
          timer = setTimeout(() => resolve("timeout"), settings.exportTimeoutMs + 1_000);
          timer.unref();
        });
        try {
          const r = await Promise.race([provider.shutdown().then(() => "done" as const), bound]);
          if (r === "timeout") log.warn({ endpoint }, "tracing shutdown timed out; unexported spans dropped");
        } catch (err) {
          log.warn({ err, endpoint }, "tracing shutdown failed; unexported spans dropped");
        } finally {
          clearTimeout(timer);
        }
      })();
      return closing;
    },
  };
}

/** The URL without credentials or query (it may carry tokens), for logs. */
function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname}`;
  } catch {
    return "(invalid URL)";
  }
}

const REPORT_EVERY_MS = 60_000;

/**
 * The exporter, with failed exports logged: the SDK reports them only to the
 * global `diag` logger, which is silent unless registered (and global). The
 * first failure is logged at once, then at most once a minute with the count
 * of spans dropped meanwhile; the first success after failures says so.
 */
function reportFailures(inner: SpanExporter, log: Logger, endpoint: string): SpanExporter {
  let failing = false;
  let lastReport = 0;
  let dropped = 0;
  const onResult = (result: ExportResult, spans: number) => {
    if (result.code === ExportResultCode.SUCCESS) {
      if (failing) log.info({ endpoint, dropped }, "span export recovered");
      failing = false;
      dropped = 0;
      return;
    }
    dropped += spans;
    const now = Date.now();
    if (!failing || now - lastReport >= REPORT_EVERY_MS) {
      log.warn(
        { endpoint, dropped, err: result.error },
        "span export failed; spans are dropped (requests and runs are not affected)",
      );
      lastReport = now;
    }
    failing = true;
  };
  return {
    export(spans: ReadableSpan[], done: (result: ExportResult) => void) {
      inner.export(spans, (result) => {
        onResult(result, spans.length);
        done(result);
      });
    },
    shutdown: () => inner.shutdown(),
    forceFlush: () => inner.forceFlush?.() ?? Promise.resolve(),
  };
}
