import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Queryable } from "../state/db.js";
import {
  createQueueStatsCache,
  demandOf,
  type QueueStats,
  type QueueStatsCacheOptions,
} from "./queue-stats.js";

/**
 * Prometheus metrics of one Capstan process (docs/operations.md#metrics). Each `createMetrics`
 * call owns a private `Registry`: nothing is registered on prom-client's
 * global registry, so several instances (tests, `capstan dev` running both
 * roles) never collide, and `/metrics` serves exactly what was created here.
 *
 * Label values are bounded by construction: agents come from the loaded
 * configuration (unknown names are folded, see worker-hooks.ts), models from
 * agent definitions, routes are route templates, and the queue series are
 * capped (`maxSeries`) with the remainder folded into `_other`.
 */

/** Step durations: 5 ms (a cached pure tool) to 2 min (a long reasoning call). */
export const STEP_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120];
/** Queued → claimed: milliseconds when idle (NOTIFY), minutes under a backlog. */
export const PICKUP_BUCKETS_S = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600,
];
/** HTTP handling time; long-lived SSE and /wait requests land in the top buckets. */
export const HTTP_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export type RunOutcomeLabel = "succeeded" | "failed" | "waiting" | "released" | "aborted";

export interface PoolStats {
  total: number;
  idle: number;
  waiting: number;
}

export interface MetricsOptions {
  /** Prefix of every Capstan metric name. Default `capstan_`. */
  prefix?: string;
  /** Labels added to every series of this registry (e.g. `{ role: "worker" }`). */
  defaultLabels?: Record<string, string>;
  /** Collect Node's default metrics (CPU, memory, GC, event-loop lag). Default true. */
  defaultMetrics?: boolean;
}

export interface QueueMetricsOptions extends QueueStatsCacheOptions {
  /** Most (agent, tenant) series exported; the smallest groups beyond it are summed into `_other`. Default 200. */
  maxSeries?: number;
}

export interface Metrics {
  readonly registry: Registry;
  readonly prefix: string;

  /** Runs this worker process is executing right now. */
  runsInFlight: Gauge;
  /** This worker's configured concurrency (in-flight ÷ capacity = saturation). */
  workerCapacity: Gauge;
  /** Runs that left this worker, by outcome (`released`: handed off at shutdown; `aborted`: lease lost or cancelled). */
  runsFinished: Counter<"outcome" | "agent">;
  /** Duration of journaled steps, by kind (llm | tool) and agent. */
  stepDuration: Histogram<"kind" | "agent">;
  /** queued_at → claim, by agent. */
  pickupLatency: Histogram<"agent">;
  /** Expired leases swept back to the queue (`requeued`) or failed for good (`failed`). */
  leaseReclaims: Counter<"result">;
  /** Journal writes refused because this worker's lease epoch was stale. */
  fencedWrites: Counter;
  /** Model calls retried (429, 5xx, network), by HTTP status (`network` when none). */
  modelRetries: Counter<"status">;
  tokensIn: Counter<"model">;
  tokensOut: Counter<"model">;
  /** Requests or calls refused by a rate limit, by scope (e.g. `api_key`, `provider`). */
  rateLimitRejections: Counter<"scope">;
  /**
   * Cache lookups by cache (`llm` response cache, pure-`tool` results,
   * `embedding`) and result (`hit` | `miss`); hit ratio = hit / (hit + miss).
   * Only lookups of enabled caches count (an agent without the LLM cache
   * does not record misses).
   */
  cacheRequests: Counter<"cache" | "result">;
  /** Input + output tokens that LLM cache hits did not spend, by model. */
  cacheTokensSaved: Counter<"model">;
  /** Open SSE streams on this ingress process. */
  sseClients: Gauge;
  /** HTTP requests by route template, method and status. */
  httpRequestDuration: Histogram<"route" | "method" | "status">;

  /** Export the database pool's connection counts, read at every scrape. */
  trackDbPool(stats: () => PoolStats): void;
  /**
   * Export queue depth, oldest-queued age, running/waiting and the scaling
   * demand from the database (cached, see `createQueueStatsCache`). Every
   * process that calls this exports the same cluster-wide numbers: aggregate
   * with `max`, not `sum` (deploy/README.md).
   */
  trackQueue(db: Queryable, opts?: QueueMetricsOptions): void;
  /** The exposition text and its content type, for `/metrics`. */
  render(): Promise<{ contentType: string; body: string }>;
}

const OTHER = "_other";

interface FoldedGroup {
  agent: string;
  tenant: string;
  ready: number;
  blocked: number;
  oldest: number | null;
}

/** Keep the `max` largest (agent, tenant) backlogs; sum the rest into one `_other` series. */
function foldGroups(stats: QueueStats, max: number): FoldedGroup[] {
  // Largest backlog first; among equal backlogs, the busiest.
  const sorted = [...stats.groups].sort(
    (a, b) => b.ready + b.blocked - (a.ready + a.blocked) || b.running + b.waiting - (a.running + a.waiting),
  );
  const keep = sorted.length > max ? sorted.slice(0, Math.max(0, max - 1)) : sorted;
  const rest = sorted.slice(keep.length);
  const out: FoldedGroup[] = keep.map((g) => ({
    agent: g.agent,
    tenant: g.tenant,
    ready: g.ready,
    blocked: g.blocked,
    oldest: g.oldestReadyAgeSeconds,
  }));
  if (rest.length) {
    const other: FoldedGroup = { agent: OTHER, tenant: OTHER, ready: 0, blocked: 0, oldest: null };
    for (const g of rest) {
      other.ready += g.ready;
      other.blocked += g.blocked;
      if (g.oldestReadyAgeSeconds !== null)
        other.oldest = Math.max(other.oldest ?? 0, g.oldestReadyAgeSeconds);
    }
    out.push(other);
  }
  return out;
}

export function createMetrics(opts: MetricsOptions = {}): Metrics {
  const prefix = opts.prefix ?? "capstan_";
  const registry = new Registry();
  if (opts.defaultLabels) registry.setDefaultLabels(opts.defaultLabels);
  // Standard names (process_*, nodejs_*), so stock Node dashboards work;
  // includes nodejs_eventloop_lag_seconds and its percentiles.
  if (opts.defaultMetrics !== false) collectDefaultMetrics({ register: registry });
  const registers = [registry];
  const n = (name: string) => prefix + name;

  let poolStats: (() => PoolStats) | undefined;
  let queue: { get(): Promise<QueueStats>; maxSeries: number } | undefined;

  /**
   * The queue stats for this scrape, or undefined when not tracked or the
   * read failed: then the queue series are omitted (never stale numbers) and
   * `queue_stats_up` says 0.
   */
  const queueNow = async (): Promise<QueueStats | undefined> => {
    if (!queue) return undefined;
    try {
      return await queue.get();
    } catch {
      return undefined;
    }
  };

  const poolGauge = (name: string, help: string, pick: (s: PoolStats) => number) =>
    new Gauge({
      name: n(name),
      help,
      registers,
      collect() {
        if (poolStats) this.set(pick(poolStats()));
      },
    });
  /** The pool gauges exist only in processes that track a pool. */
  const registerPoolGauges = () => {
    poolGauge("db_pool_connections", "Connections in the database pool (busy + idle)", (s) => s.total);
    poolGauge("db_pool_idle_connections", "Idle connections in the database pool", (s) => s.idle);
    poolGauge(
      "db_pool_waiting_clients",
      "Queries waiting for a pool connection (sustained > 0: the pool is too small or the database too slow)",
      (s) => s.waiting,
    );
  };

  /** The queue gauges exist only in processes that track the queue. */
  const registerQueueGauges = () => {
    new Gauge({
      name: n("queue_stats_up"),
      help: "1 when the last queue statistics read from the database succeeded",
      registers,
      async collect() {
        this.reset();
        this.set((await queueNow()) ? 1 : 0);
      },
    });
    const byGroup = (
      name: string,
      help: string,
      pick: (g: FoldedGroup) => number | null,
    ): Gauge<"agent" | "tenant"> =>
      new Gauge({
        name: n(name),
        help,
        labelNames: ["agent", "tenant"] as const,
        registers,
        async collect() {
          this.reset();
          const s = await queueNow();
          if (!s || !queue) return;
          for (const g of foldGroups(s, queue.maxSeries)) {
            const v = pick(g);
            if (v !== null) this.set({ agent: g.agent, tenant: g.tenant }, v);
          }
        },
      });
    byGroup("queue_depth", "Claimable queued runs (head of their thread), cluster-wide", (g) => g.ready);
    byGroup(
      "queue_blocked",
      "Queued runs waiting behind an earlier run of the same thread (more workers do not help)",
      (g) => g.blocked,
    );
    byGroup("queue_oldest_age_seconds", "Age of the oldest claimable queued run (database clock)", (g) =>
      g.ready > 0 ? g.oldest : null,
    );
    const byAgent = (name: string, help: string, pick: (g: QueueStats["groups"][number]) => number) =>
      new Gauge({
        name: n(name),
        help,
        labelNames: ["agent"] as const,
        registers,
        async collect() {
          this.reset();
          const s = await queueNow();
          if (!s) return;
          const sums = new Map<string, number>();
          for (const g of s.groups) sums.set(g.agent, (sums.get(g.agent) ?? 0) + pick(g));
          // Agents are few (the loaded configuration); cap anyway.
          const sorted = [...sums].sort((a, b) => b[1] - a[1]);
          const max = queue?.maxSeries ?? 200;
          let other = 0;
          sorted.forEach(([agent, v], i) => {
            if (i < max - 1 || sorted.length <= max) this.set({ agent }, v);
            else other += v;
          });
          if (sorted.length > max) this.set({ agent: OTHER }, other);
        },
      });
    byAgent("runs_running", "Runs in `running` (holding a lease), cluster-wide", (g) => g.running);
    byAgent(
      "runs_waiting",
      "Runs in `waiting` (on approval or input; hold no worker), cluster-wide",
      (g) => g.waiting,
    );
    new Gauge({
      name: n("scaling_demand"),
      help: "Claimable + running runs, capped per tenant by its concurrency: the value the KEDA trigger scales on",
      registers,
      async collect() {
        const s = await queueNow();
        if (s) this.set(demandOf(s));
        // An unlabelled gauge always has a value: remove it rather than export a false 0.
        else this.remove({});
      },
    });
  };

  const metrics: Metrics = {
    registry,
    prefix,
    runsInFlight: new Gauge({ name: n("runs_in_flight"), help: "Runs this worker is executing", registers }),
    workerCapacity: new Gauge({
      name: n("worker_capacity"),
      help: "Runs this worker may execute at once (worker.concurrency)",
      registers,
    }),
    runsFinished: new Counter({
      name: n("runs_finished_total"),
      help: "Runs that left this worker, by outcome (succeeded, failed, waiting, released, aborted)",
      labelNames: ["outcome", "agent"] as const,
      registers,
    }),
    stepDuration: new Histogram({
      name: n("step_duration_seconds"),
      help: "Duration of executed steps, by kind (llm, tool)",
      labelNames: ["kind", "agent"] as const,
      buckets: STEP_BUCKETS_S,
      registers,
    }),
    pickupLatency: new Histogram({
      name: n("pickup_latency_seconds"),
      help: "Time from queued_at (enqueue or requeue) to claim",
      labelNames: ["agent"] as const,
      buckets: PICKUP_BUCKETS_S,
      registers,
    }),
    leaseReclaims: new Counter({
      name: n("lease_reclaims_total"),
      help: "Expired leases reclaimed by this process: requeued, or failed (attempts exhausted: lost leases in a row without a journaled step)",
      labelNames: ["result"] as const,
      registers,
    }),
    fencedWrites: new Counter({
      name: n("fenced_writes_total"),
      help: "Writes refused because the lease epoch was stale (this worker had lost the run)",
      registers,
    }),
    modelRetries: new Counter({
      name: n("model_retries_total"),
      help: "Model calls retried, by HTTP status (network: no status)",
      labelNames: ["status"] as const,
      registers,
    }),
    tokensIn: new Counter({
      name: n("llm_input_tokens_total"),
      help: "Input (prompt) tokens billed, by model",
      labelNames: ["model"] as const,
      registers,
    }),
    tokensOut: new Counter({
      name: n("llm_output_tokens_total"),
      help: "Output (completion) tokens billed, by model",
      labelNames: ["model"] as const,
      registers,
    }),
    rateLimitRejections: new Counter({
      name: n("rate_limit_rejections_total"),
      help: "Requests or calls refused by a rate limit, by scope",
      labelNames: ["scope"] as const,
      registers,
    }),
    cacheRequests: new Counter({
      name: n("cache_requests_total"),
      help: "Cache lookups by cache (llm, tool, embedding) and result (hit, miss)",
      labelNames: ["cache", "result"] as const,
      registers,
    }),
    cacheTokensSaved: new Counter({
      name: n("cache_tokens_saved_total"),
      help: "Tokens (input + output) that LLM response cache hits did not spend, by model",
      labelNames: ["model"] as const,
      registers,
    }),
    sseClients: new Gauge({ name: n("sse_clients"), help: "Open SSE streams on this process", registers }),
    httpRequestDuration: new Histogram({
      name: n("http_request_duration_seconds"),
      help: "HTTP requests by route template, method and status",
      labelNames: ["route", "method", "status"] as const,
      buckets: HTTP_BUCKETS_S,
      registers,
    }),
    trackDbPool(stats) {
      if (!poolStats) registerPoolGauges();
      poolStats = stats;
    },
    trackQueue(db, o = {}) {
      const maxSeries = Math.max(1, o.maxSeries ?? 200);
      const cache = createQueueStatsCache(db, o);
      if (!queue) registerQueueGauges();
      queue = { get: () => cache.get(), maxSeries };
    },
    async render() {
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
  };
  return metrics;
}
