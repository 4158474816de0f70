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
}

/** Watcher counts of every ingress registered on a registry (normally one per process). */
const watcherSources = new WeakMap<Registry, Set<() => number>>();

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

  let sources = watcherSources.get(reg);
  if (!sources) {
    const set = new Set<() => number>();
    sources = set;
    watcherSources.set(reg, set);
    new Gauge({
      name: n("ingress_run_watchers"),
      help: "SSE streams and /wait calls watching runs on this process (bounded by maxWatchers)",
      registers: [reg],
      collect() {
        let total = 0;
        for (const f of set) total += f();
        this.set(total);
      },
    });
  }
  sources.add(watchers);
  const set = sources;

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
    },
    release: () => set.delete(watchers),
  };
}
