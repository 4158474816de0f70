import { CapstanError } from "../errors.js";
import type { Queryable } from "../state/db.js";
import {
  desiredWorkers,
  readQueueStats,
  readScalingDemand,
  type QueueGroup,
  type ScalingRule,
} from "../observability/queue-stats.js";

/**
 * `capstan status`: the autoscaling advisor. It reads the same numbers the
 * metrics export and applies the same rule, on the same SQL
 * (`KEDA_QUEUE_QUERY`), as the KEDA trigger in deploy/k8s, so what it prints
 * is what the cluster would do. Read-only; a handful of cheap queries.
 */

export type StatusOptions = ScalingRule & {
  /** Most (agent, tenant) rows listed, largest first. Default 10. */
  top?: number;
};

export interface StatusReport {
  ready: number;
  blocked: number;
  running: number;
  waiting: number;
  /** Seconds; null when nothing is claimable. */
  oldestReadyAgeSeconds: number | null;
  /** Runs finished in the last 60 s, by terminal status. */
  finishedLastMinute: { succeeded: number; failed: number; cancelled: number };
  /** Distinct lease owners among running runs: workers busy right now. */
  workersWithLeases: number;
  /** `KEDA_QUEUE_QUERY`. */
  demand: number;
  desiredWorkers: number;
  rule: ScalingRule;
  groups: QueueGroup[];
}

const ACTIVITY_QUERY = `
SELECT (SELECT count(*) FROM runs WHERE finished_at > now() - interval '60 seconds' AND status = 'succeeded')::int
         AS succeeded,
       (SELECT count(*) FROM runs WHERE finished_at > now() - interval '60 seconds' AND status = 'failed')::int
         AS failed,
       (SELECT count(*) FROM runs WHERE finished_at > now() - interval '60 seconds' AND status = 'cancelled')::int
         AS cancelled,
       (SELECT count(DISTINCT lease_owner) FROM runs WHERE status = 'running')::int AS workers`;

function validate(rule: ScalingRule): void {
  const bad: { field: string; message: string }[] = [];
  if (!Number.isInteger(rule.targetInFlightPerWorker) || rule.targetInFlightPerWorker < 1)
    bad.push({ field: "targetInFlightPerWorker", message: "must be a positive integer" });
  if (!Number.isInteger(rule.minWorkers) || rule.minWorkers < 0)
    bad.push({ field: "minWorkers", message: "must be a non-negative integer" });
  if (!Number.isInteger(rule.maxWorkers) || rule.maxWorkers < 1)
    bad.push({ field: "maxWorkers", message: "must be a positive integer" });
  else if (rule.maxWorkers < rule.minWorkers)
    bad.push({ field: "maxWorkers", message: `must be at least minWorkers (${rule.minWorkers})` });
  if (bad.length)
    throw new CapstanError(
      "validation_failed",
      "invalid scaling rule: " + bad.map((b) => `${b.field} ${b.message}`).join("; "),
      { fields: bad },
    );
}

/** The numbers behind `renderStatus` (for `--json`). */
export async function readStatus(db: Queryable, opts: StatusOptions): Promise<StatusReport> {
  const rule: ScalingRule = {
    targetInFlightPerWorker: opts.targetInFlightPerWorker,
    minWorkers: opts.minWorkers,
    maxWorkers: opts.maxWorkers,
  };
  validate(rule);
  const [stats, demand, activity] = await Promise.all([
    readQueueStats(db),
    readScalingDemand(db),
    db.query<{ succeeded: number; failed: number; cancelled: number; workers: number }>(ACTIVITY_QUERY),
  ]);
  const a = activity.rows[0] ?? { succeeded: 0, failed: 0, cancelled: 0, workers: 0 };
  let oldest: number | null = null;
  const sum = { ready: 0, blocked: 0, running: 0, waiting: 0 };
  for (const g of stats.groups) {
    sum.ready += g.ready;
    sum.blocked += g.blocked;
    sum.running += g.running;
    sum.waiting += g.waiting;
    if (g.oldestReadyAgeSeconds !== null) oldest = Math.max(oldest ?? 0, g.oldestReadyAgeSeconds);
  }
  return {
    ...sum,
    oldestReadyAgeSeconds: oldest,
    finishedLastMinute: { succeeded: a.succeeded, failed: a.failed, cancelled: a.cancelled },
    workersWithLeases: a.workers,
    demand,
    desiredWorkers: desiredWorkers(demand, rule),
    rule,
    groups: [...stats.groups].sort(
      (x, y) =>
        y.ready + y.blocked + y.running + y.waiting - (x.ready + x.blocked + x.running + x.waiting) ||
        x.agent.localeCompare(y.agent) ||
        x.tenant.localeCompare(y.tenant),
    ),
  };
}

/** `capstan status --json`: the report with the API's snake_case field names. */
export function statusJson(r: StatusReport): Record<string, unknown> {
  return {
    ready: r.ready,
    blocked: r.blocked,
    running: r.running,
    waiting: r.waiting,
    oldest_ready_age_seconds: r.oldestReadyAgeSeconds,
    finished_last_minute: r.finishedLastMinute,
    workers_with_leases: r.workersWithLeases,
    demand: r.demand,
    desired_workers: r.desiredWorkers,
    rule: {
      target_in_flight_per_worker: r.rule.targetInFlightPerWorker,
      min_workers: r.rule.minWorkers,
      max_workers: r.rule.maxWorkers,
    },
    groups: r.groups.map((g) => ({
      agent: g.agent,
      tenant: g.tenant,
      max_concurrency: g.maxConcurrency,
      ready: g.ready,
      blocked: g.blocked,
      running: g.running,
      waiting: g.waiting,
      oldest_ready_age_seconds: g.oldestReadyAgeSeconds,
    })),
  };
}

export function formatAge(seconds: number | null): string {
  if (seconds === null) return "-";
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

function table(rows: string[][]): string[] {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? "").length)));
  return rows.map((r) =>
    r
      .map((c, i) => (i < 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)))
      .join("  ")
      .trimEnd(),
  );
}

/** Render a `StatusReport` as the text `capstan status` prints. */
export function formatStatus(r: StatusReport, top = 10): string {
  const { targetInFlightPerWorker: target, minWorkers: min, maxWorkers: max } = r.rule;
  const f = r.finishedLastMinute;
  const raw = Math.ceil(r.demand / target);
  const lines = [
    "queue",
    `  ready (claimable)          ${r.ready}`,
    `  blocked (behind thread)    ${r.blocked}`,
    `  oldest ready age           ${formatAge(r.oldestReadyAgeSeconds)}`,
    `in flight (running)          ${r.running}`,
    `waiting (approval / input)   ${r.waiting}`,
    `throughput (last minute)     ${f.succeeded + f.failed + f.cancelled} finished ` +
      `(${f.succeeded} succeeded, ${f.failed} failed, ${f.cancelled} cancelled)`,
    `workers holding leases       ${r.workersWithLeases}`,
    "scaling",
    `  demand                     ${r.demand} (ready + running, capped per tenant by its concurrency)`,
    `  target per worker          ${target}`,
    `  desired workers            ${r.desiredWorkers} (ceil(${r.demand} / ${target}) = ${raw}, clamped to [${min}, ${max}])`,
  ];
  if (r.groups.length) {
    const shown = r.groups.slice(0, top);
    lines.push(
      `by agent and tenant${r.groups.length > top ? ` (largest ${top} of ${r.groups.length})` : ""}`,
    );
    const rows = [
      ["AGENT", "TENANT", "READY", "BLOCKED", "RUNNING", "WAITING", "OLDEST"],
      ...shown.map((g) => [
        g.agent,
        g.tenant,
        String(g.ready),
        String(g.blocked),
        String(g.running),
        String(g.waiting),
        formatAge(g.oldestReadyAgeSeconds),
      ]),
    ];
    lines.push(...table(rows).map((l) => "  " + l));
  }
  return lines.join("\n") + "\n";
}

/**
 * Queue depth, oldest queued age, in-flight, throughput and the worker count
 * the scaling rule asks for: ceil((ready + running, capped per tenant) /
 * targetInFlightPerWorker), clamped to [minWorkers, maxWorkers].
 */
export async function renderStatus(db: Queryable, opts: StatusOptions): Promise<string> {
  return formatStatus(await readStatus(db, opts), opts.top ?? 10);
}
