import type { ClaimedRun } from "../state/types.js";
import type { Metrics, RunOutcomeLabel } from "./metrics.js";

/**
 * The worker's observability hooks, bound to a `Metrics`. `onClaim` and
 * `onRunEnd` match `WorkerDeps["hooks"]` in src/worker/worker.ts today; the
 * other hooks are for the reasoning loop (steps, fenced writes), the model
 * caller (retries) and the claimer (lease sweeps) to call. Every hook is
 * synchronous, cheap and never throws: metrics must not be able to break a run.
 */

export interface StepObservation {
  agent: string;
  kind: "llm" | "tool";
  /** Wall time of the step as executed by this worker (not replayed from the journal). */
  ms: number;
  /** `provider:model` of an LLM step (see `modelLabel` in src/agent/models.ts). */
  model?: string;
  /** Token usage of an LLM step. */
  usage?: { inputTokens: number; outputTokens: number };
  /** The run the step belongs to (tracing: the step span's parent run span). */
  runId?: string;
  /** The step's journal number. */
  stepNo?: number;
  /** The tool a tool step called. */
  toolName?: string;
}

/** One cache lookup, as the reasoning loop saw it (src/cost/cache.ts lookups). */
export interface CacheObservation {
  cache: "llm" | "tool" | "embedding";
  hit: boolean;
  /** `provider:model` of an LLM lookup (labels `capstan_cache_tokens_saved_total`). */
  model?: string;
  /** LLM hits: the input + output tokens the hit did not spend. */
  tokensSaved?: number;
}

export interface WorkerMetricsHooks {
  onClaim(run: ClaimedRun): void;
  onRunEnd(run: ClaimedRun, outcome: RunOutcomeLabel, ms: number): void;
  /** After a step was executed and journaled (not for steps replayed from the journal). */
  onStep(step: StepObservation): void;
  /** Each time a model call is retried; `status` is the HTTP status when there was one. */
  onModelRetry(info: { status?: number | undefined }): void;
  /** A write refused with `LeaseLostError` (stale epoch: fenced). */
  onFencedWrite(): void;
  /** After each expired-lease sweep (`reclaimExpired`) with what it did. */
  onLeaseReclaim(result: { requeued: number; failed: number }): void;
  /** A call refused by a rate limit (e.g. the shared provider TPM/RPM window). */
  onRateLimited(scope: string): void;
  /** Each lookup of an enabled cache (not for steps replayed from the journal). */
  onCache(c: CacheObservation): void;
}

export interface WorkerHooksOptions {
  /**
   * The agents this worker loaded. Runs name their agent in user input: any
   * other name is labelled `_unknown`, which keeps label cardinality bounded.
   */
  agents?: Iterable<string>;
  /** This worker's `worker.concurrency`, exported as `worker_capacity`. */
  concurrency?: number;
  /** Injected clock (tests). */
  now?: () => number;
}

const UNKNOWN = "_unknown";

/** Wraps a hook so that it swallows its own errors: observability must never fail a run. */
export function neverThrows<A extends unknown[]>(fn: (...args: A) => void): (...args: A) => void {
  return (...args: A): void => {
    try {
      fn(...args);
    } catch {
      // Deliberately ignored (see above).
    }
  };
}

export function workerMetricsHooks(metrics: Metrics, opts: WorkerHooksOptions = {}): WorkerMetricsHooks {
  const known = opts.agents ? new Set(opts.agents) : undefined;
  const agentLabel = (a: string) => (!known || known.has(a) ? a : UNKNOWN);
  const now = opts.now ?? Date.now;
  if (opts.concurrency !== undefined) metrics.workerCapacity.set(opts.concurrency);
  // A metrics bug must never fail a run; prom-client only throws on misuse.
  const safe = neverThrows;

  return {
    onClaim: safe((run: ClaimedRun) => {
      metrics.runsInFlight.inc();
      // queued_at comes from the database clock: clamp the (small) skew.
      const waited = Math.max(0, now() - run.queuedAt.getTime()) / 1000;
      metrics.pickupLatency.observe({ agent: agentLabel(run.agent) }, waited);
    }),
    onRunEnd: safe((run: ClaimedRun, outcome: RunOutcomeLabel) => {
      metrics.runsInFlight.dec();
      metrics.runsFinished.inc({ outcome, agent: agentLabel(run.agent) });
    }),
    onStep: safe((s: StepObservation) => {
      metrics.stepDuration.observe({ kind: s.kind, agent: agentLabel(s.agent) }, Math.max(0, s.ms) / 1000);
      if (s.usage && s.model) {
        if (s.usage.inputTokens > 0) metrics.tokensIn.inc({ model: s.model }, s.usage.inputTokens);
        if (s.usage.outputTokens > 0) metrics.tokensOut.inc({ model: s.model }, s.usage.outputTokens);
      }
    }),
    onModelRetry: safe((info: { status?: number | undefined }) => {
      metrics.modelRetries.inc({ status: info.status === undefined ? "network" : String(info.status) });
    }),
    onFencedWrite: safe(() => metrics.fencedWrites.inc()),
    onLeaseReclaim: safe((r: { requeued: number; failed: number }) => {
      if (r.requeued > 0) metrics.leaseReclaims.inc({ result: "requeued" }, r.requeued);
      if (r.failed > 0) metrics.leaseReclaims.inc({ result: "failed" }, r.failed);
    }),
    onRateLimited: safe((scope: string) => metrics.rateLimitRejections.inc({ scope })),
    onCache: safe((c: CacheObservation) => {
      metrics.cacheRequests.inc({ cache: c.cache, result: c.hit ? "hit" : "miss" });
      if (c.hit && c.model && c.tokensSaved && c.tokensSaved > 0)
        metrics.cacheTokensSaved.inc({ model: c.model }, c.tokensSaved);
    }),
  };
}
