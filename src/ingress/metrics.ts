import { Counter, Gauge, type Registry } from "prom-client";
import { createMetrics, type Metrics } from "../observability/metrics.js";

/**
 * Ingress metrics (docs/operations.md#metrics). The process-wide ones (HTTP durations, SSE
 * clients, rate-limit rejections) live in the process `Metrics`, so one
 * `/metrics` covers every role in the process (`capstan dev`); the few that
 * only the ingress has are added to the same registry, with its prefix.
 */
export interface IngressMetrics {
  base: Metrics;
  /** Rate-limiter calls that failed and were answered by the fail-open/closed policy. */
  rateLimiterErrors: Counter<"policy">;
  /** Best-effort publishes (cancel, interrupt) that failed; readers fill from Postgres. */
  publishFailures: Counter;
  /** SSE clients the server dropped, by reason (slow_client, error). */
  sseDropped: Counter<"reason">;
  /**
   * Count one SSE stream's unsent bytes (read when scraped) in
   * `ingress_sse_buffered_bytes`; the returned function stops counting it.
   */
  trackSseBuffer(unsent: () => number): () => void;
}

/** Watcher counts of every ingress registered on a registry (normally one per process). */
const watcherSources = new WeakMap<Registry, Set<() => number>>();
/** Unsent bytes of every SSE stream open on a registry's process. */
const sseBufferSources = new WeakMap<Registry, Set<() => number>>();

/** One gauge per registry summing live sources at scrape time (two apps on one registry share it). */
function summedGauge(
  store: WeakMap<Registry, Set<() => number>>,
  reg: Registry,
  name: string,
  help: string,
): Set<() => number> {
  let set = store.get(reg);
  if (!set) {
    const sources = new Set<() => number>();
    set = sources;
    store.set(reg, sources);
    new Gauge({
      name,
      help,
      registers: [reg],
      collect() {
        let total = 0;
        for (const f of sources) total += f();
        this.set(total);
      },
    });
  }
  return set;
}

function counter<L extends string>(reg: Registry, name: string, help: string, labelNames: L[]): Counter<L> {
  // Two ingress apps on one registry (tests, embedding) share the series rather than collide.
  const existing = reg.getSingleMetric(name);
  if (existing) return existing as Counter<L>;
  return new Counter({ name, help, labelNames, registers: [reg] });
}

export function createIngressMetrics(
  base: Metrics | undefined,
  watchers: () => number,
): { metrics: IngressMetrics; release: () => void } {
  const m = base ?? createMetrics();
  const reg = m.registry;
  const n = (s: string): string => m.prefix + s;

  const set = summedGauge(
    watcherSources,
    reg,
    n("ingress_run_watchers"),
    "SSE streams and /wait calls watching runs on this process (bounded by maxWatchers)",
  );
  set.add(watchers);
  const buffers = summedGauge(
    sseBufferSources,
    reg,
    n("ingress_sse_buffered_bytes"),
    "Bytes written to SSE streams on this process and not yet sent (bounded per stream by maxBufferedBytes)",
  );

  return {
    metrics: {
      base: m,
      rateLimiterErrors: counter(
        reg,
        n("ingress_rate_limiter_errors_total"),
        "Rate-limiter failures (coordination backend down), by the policy applied",
        ["policy"],
      ),
      publishFailures: counter(
        reg,
        n("ingress_event_publish_failures_total"),
        "Best-effort event publishes to the live stream that failed",
        [],
      ),
      sseDropped: counter(
        reg,
        n("ingress_sse_dropped_total"),
        "SSE clients dropped by the server, by reason",
        ["reason"],
      ),
      trackSseBuffer(unsent) {
        buffers.add(unsent);
        return () => buffers.delete(unsent);
      },
    },
    release: () => set.delete(watchers),
  };
}
