import type { Queryable } from "../state/db.js";

/**
 * Queue statistics read straight from the runs table (docs/operations.md#metrics): the
 * numbers autoscaling and the operator act on. Everything here is one cheap
 * query over the *pending* part of the table only, so its cost grows with the
 * backlog, never with history.
 */

/**
 * The per (agent, tenant) pending counts, one GROUP BY over the partial index
 * `runs_tenant_active` (status IN queued/running/waiting: the WHERE below is
 * exactly its predicate, so finished runs are never touched).
 *
 * - `ready`: queued runs that are the head of their thread, i.e. claimable now.
 * - `blocked`: queued runs waiting behind an earlier run of the same thread;
 *   more workers cannot speed them up.
 * - `oldest_ready_age_s`: age of the oldest claimable run, measured with the
 *   database clock (no skew between replicas). `queued_at` is the enqueue time
 *   (or the last requeue: lease reclaim, hand-off, resume), so a run that
 *   waited behind its thread's head counts that wait too.
 * - `max_concurrency`: the tenant's cap, so the scaling demand can be derived
 *   from these rows exactly as `KEDA_QUEUE_QUERY` computes it.
 */
export const QUEUE_STATS_QUERY = `
SELECT r.agent,
       t.name AS tenant,
       t.max_concurrency,
       count(*) FILTER (WHERE r.status = 'queued' AND r.ready)::int AS ready,
       count(*) FILTER (WHERE r.status = 'queued' AND NOT r.ready)::int AS blocked,
       count(*) FILTER (WHERE r.status = 'running')::int AS running,
       count(*) FILTER (WHERE r.status = 'waiting')::int AS waiting,
       extract(epoch FROM now() - min(r.queued_at) FILTER (WHERE r.status = 'queued' AND r.ready))::float8
         AS oldest_ready_age_s
FROM runs r
JOIN tenants t ON t.id = r.tenant_id
WHERE r.status IN ('queued', 'running', 'waiting')
GROUP BY r.agent, t.name, t.max_concurrency`;

/**
 * The scaling signal, shared verbatim by the KEDA `postgresql` trigger
 * (deploy/k8s/worker-scaledobject.yaml; a test checks they are identical),
 * `capstan status` and the `capstan_scaling_demand` gauge:
 *
 *   demand = Σ over tenants of min(ready queued + running, tenant cap)
 *
 * i.e. the runs that could be executing right now. Blocked runs (behind their
 * thread's head) and waiting runs (on a human; they hold no worker) are not
 * demand, and a tenant's backlog beyond its concurrency cap cannot use more
 * workers, so it is not demand either. KEDA divides it by `targetQueryValue`
 * (the in-flight runs one worker should carry) and rounds up: the desired
 * worker count, clamped to [minReplicaCount, maxReplicaCount].
 *
 * Returns one row with one integer column. Reads only pending runs (the
 * partial index `runs_tenant_active`) and the tenants they belong to.
 */
export const KEDA_QUEUE_QUERY = `
SELECT coalesce(sum(CASE WHEN t.max_concurrency IS NULL THEN d.n
                         ELSE least(d.n, t.max_concurrency) END), 0)::int AS demand
FROM (SELECT tenant_id, count(*) AS n
      FROM runs
      WHERE status IN ('queued', 'running') AND (ready OR status = 'running')
      GROUP BY tenant_id) d
JOIN tenants t ON t.id = d.tenant_id`;

export interface QueueGroup {
  agent: string;
  /** Tenant name (unique), not its id: readable in dashboards. */
  tenant: string;
  /** The tenant's running-runs cap, null when uncapped. */
  maxConcurrency: number | null;
  ready: number;
  blocked: number;
  running: number;
  waiting: number;
  /** Seconds the oldest claimable run has waited; null when none is claimable. */
  oldestReadyAgeSeconds: number | null;
}

export interface QueueStats {
  groups: QueueGroup[];
  /** When the numbers were read (this process's clock). */
  readAt: number;
}

interface QueueRow {
  agent: string;
  tenant: string;
  max_concurrency: number | null;
  ready: number;
  blocked: number;
  running: number;
  waiting: number;
  oldest_ready_age_s: number | null;
}

/** Read the pending counts per (agent, tenant): one query. */
export async function readQueueStats(db: Queryable): Promise<QueueStats> {
  const r = await db.query<QueueRow>(QUEUE_STATS_QUERY);
  return {
    readAt: Date.now(),
    groups: r.rows.map((row) => ({
      agent: row.agent,
      tenant: row.tenant,
      maxConcurrency: row.max_concurrency,
      ready: row.ready,
      blocked: row.blocked,
      running: row.running,
      waiting: row.waiting,
      oldestReadyAgeSeconds: row.oldest_ready_age_s === null ? null : Math.max(0, row.oldest_ready_age_s),
    })),
  };
}

/** Run `KEDA_QUEUE_QUERY`: the number KEDA scales on. */
export async function readScalingDemand(db: Queryable): Promise<number> {
  const r = await db.query<{ demand: number }>(KEDA_QUEUE_QUERY);
  return r.rows[0]?.demand ?? 0;
}

/**
 * The same demand as `KEDA_QUEUE_QUERY`, derived from the per-group rows
 * (so the metrics need no second query).
 */
export function demandOf(stats: QueueStats): number {
  const perTenant = new Map<string, { n: number; cap: number | null }>();
  for (const g of stats.groups) {
    const t = perTenant.get(g.tenant) ?? { n: 0, cap: g.maxConcurrency };
    t.n += g.ready + g.running;
    perTenant.set(g.tenant, t);
  }
  let demand = 0;
  for (const t of perTenant.values()) demand += t.cap === null ? t.n : Math.min(t.n, t.cap);
  return demand;
}

export interface ScalingRule {
  /** In-flight runs one worker should carry (KEDA `targetQueryValue`); below `worker.concurrency` for headroom. */
  targetInFlightPerWorker: number;
  /** The warm pool (KEDA `minReplicaCount`). */
  minWorkers: number;
  /** KEDA `maxReplicaCount`; size it from Postgres `max_connections` (deploy/README.md). */
  maxWorkers: number;
}

/** The scaling rule KEDA applies: ceil(demand / target), clamped to [min, max]. */
export function desiredWorkers(demand: number, rule: ScalingRule): number {
  const raw = Math.ceil(Math.max(0, demand) / rule.targetInFlightPerWorker);
  return Math.min(rule.maxWorkers, Math.max(rule.minWorkers, raw));
}

export interface QueueStatsCacheOptions {
  /** How long one read is served to every caller (scrapes from many replicas stay cheap). Default 2,000 ms. */
  ttlMs?: number;
  /** A read that takes longer is answered as failed (the query itself is bounded by the pool's statement timeout). Default 1,500 ms. */
  timeoutMs?: number;
}

export interface QueueStatsCache {
  /** The cached stats, refreshing them when older than the TTL. Rejects when the last read failed. */
  get(): Promise<QueueStats>;
}

/**
 * `readQueueStats` behind a short TTL and single flight: concurrent callers
 * share one query, and a failure is remembered for the TTL too, so a
 * struggling database is not hammered by scrapes.
 */
export function createQueueStatsCache(db: Queryable, opts: QueueStatsCacheOptions = {}): QueueStatsCache {
  const ttlMs = opts.ttlMs ?? 2_000;
  const timeoutMs = opts.timeoutMs ?? 1_500;
  let last: { at: number; result: Promise<QueueStats> } | undefined;
  let inflight: Promise<QueueStats> | undefined;

  const refresh = (): Promise<QueueStats> => {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`queue stats: no answer within ${timeoutMs} ms`)), timeoutMs);
    });
    const p = Promise.race([readQueueStats(db), timeout]).finally(() => clearTimeout(timer));
    inflight = p;
    // Remember the outcome (success or failure) once settled.
    void p
      .then(
        () => undefined,
        () => undefined,
      )
      .finally(() => {
        last = { at: Date.now(), result: p };
        inflight = undefined;
      });
    return p;
  };

  return {
    get() {
      if (inflight) return inflight;
      if (last && Date.now() - last.at < ttlMs) return last.result;
      return refresh();
    },
  };
}
