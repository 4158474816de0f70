import { CapstanError, LeaseLostError } from "../errors.js";
import { CHANNELS } from "./channels.js";
import type { Db, Queryable } from "./db.js";
import { insertEvents } from "./events.js";
import { assertWithinBudget } from "./budgets.js";
import { assertKeyNotStored, lockIdempotencyKey } from "./idempotency.js";
import { isUniqueViolation } from "./pg-errors.js";
import { readJournal } from "./journal.js";
import { attemptsExhausted, journalProgressSql, stuckStep } from "./progress.js";
import { appendMessages, lockThread } from "./threads.js";
import {
  toRun,
  toTraceContext,
  type ClaimedRun,
  type Lease,
  type Multitask,
  type NewEvent,
  type NewMessage,
  type Run,
  type RunError,
  type RunEvent,
  type TraceContext,
} from "./types.js";

/**
 * The run queue. Invariants, all enforced in SQL so they hold across every
 * process:
 *
 * - A thread has at most one *head* run (`ready`): the lowest-seq run of the
 *   thread that is queued, running or waiting. Only a ready run is claimed, so
 *   runs of one thread never overlap and start in FIFO order. `ready` and the
 *   thread's message seqs change only under the thread row lock.
 * - A run's input message joins the thread history when the run becomes head,
 *   so history reads user/assistant/user/assistant even with queued runs.
 * - Every claim increments `lease_epoch`; a write that presents an older epoch,
 *   or targets a run no longer `running`, is refused (`LeaseLostError`).
 * - `attempts` counts claims (a graceful hand-off takes its claim back); what
 *   fails a run with `attempts_exhausted` is `stalled_attempts`, lost leases
 *   in a row whose attempt journaled nothing new (src/state/progress.ts).
 * - Lock order is thread row, then run rows; claims take run rows with SKIP
 *   LOCKED and never wait on them, so no cycle can form.
 */

const PENDING = "('queued', 'running', 'waiting')";

/**
 * Whether the run's current attempt journaled progress since its claim
 * (src/state/progress.ts), in a statement whose run row is the unaliased
 * table `runs`. A run claimed before `claim_progress` existed counts as
 * having progressed.
 */
const PROGRESSED = `coalesce(${journalProgressSql("runs.id")} > runs.claim_progress, true)`;

export interface EnqueueInput {
  tenantId: string;
  threadId: string;
  agent: string;
  /** The user message content (string or structured parts). */
  content: unknown;
  multitask?: Multitask;
  priority?: number;
  metadata?: Record<string, unknown>;
  idempotencyKey?: string;
  /** Hash of the request body: the same key with a different body is refused. */
  requestHash?: string;
  maxAttempts: number;
  /** Pending-run cap for tenants that set none. */
  defaultMaxPending: number;
  /** Refuse the run (`budget_exceeded`) when the tenant's token budget is spent. Default true. */
  enforceBudget?: boolean;
  /** The creating request's trace context (tracing on), continued by every attempt's worker. */
  traceContext?: TraceContext;
}

export interface EnqueueResult {
  run: Run;
  /** False when an identical request with the same idempotency key already created it. */
  created: boolean;
  /** Events persisted by the transaction (for runs cancelled by `interrupt`), to publish. */
  events: RunEvent[];
}

/**
 * Enqueue a run with its input in one transaction. `reject` refuses while the
 * thread has pending runs; `interrupt` cancels them first; `enqueue` queues
 * behind them.
 */
export async function enqueueRun(db: Db, input: EnqueueInput): Promise<EnqueueResult> {
  if (input.idempotencyKey) {
    const existing = await findByIdempotencyKey(db, input.tenantId, input.idempotencyKey, input.requestHash);
    if (existing) return { run: existing, created: false, events: [] };
  }
  try {
    return await db.tx((q) => enqueueTx(q, input));
  } catch (err) {
    // A concurrent request with the same key won the race: answer with its run.
    if (input.idempotencyKey && isUniqueViolation(err, "runs_idempotency")) {
      const existing = await findByIdempotencyKey(
        db,
        input.tenantId,
        input.idempotencyKey,
        input.requestHash,
      );
      if (existing) return { run: existing, created: false, events: [] };
    }
    throw err;
  }
}

async function findByIdempotencyKey(
  q: Queryable,
  tenantId: string,
  key: string,
  requestHash: string | undefined,
): Promise<Run | null> {
  const r = await q.query("SELECT * FROM runs WHERE tenant_id = $1 AND idempotency_key = $2", [
    tenantId,
    key,
  ]);
  if (!r.rows[0]) return null;
  const run = toRun(r.rows[0]);
  if ((run.requestHash ?? undefined) !== requestHash) {
    throw new CapstanError(
      "idempotency_key_reused",
      `Idempotency-Key ${key} was already used with a different request body`,
      { fields: [{ field: "Idempotency-Key", message: "already used with a different request" }] },
    );
  }
  return run;
}

async function enqueueTx(q: Queryable, input: EnqueueInput): Promise<EnqueueResult> {
  if (input.idempotencyKey) {
    // One key is one effect across every route: under the key's lock (the one withIdempotencyKey
    // takes, and like it before any row lock), a key a concurrent request used for a thread,
    // cancel, resume or memory is seen committed, and refused.
    await lockIdempotencyKey(q, input.tenantId, input.idempotencyKey);
    const existing = await findByIdempotencyKey(q, input.tenantId, input.idempotencyKey, input.requestHash);
    if (existing) return { run: existing, created: false, events: [] };
    await assertKeyNotStored(q, input.tenantId, input.idempotencyKey);
  }
  if (!(await lockThread(q, input.threadId, input.tenantId))) {
    throw new CapstanError("not_found", `thread ${input.threadId} not found`);
  }
  // After the idempotency lookup: a retried request still gets its run.
  if (input.enforceBudget !== false) await assertWithinBudget(q, input.tenantId);

  const multitask = input.multitask ?? "enqueue";
  const pending = await q.query<{ id: string }>(
    `SELECT id FROM runs WHERE thread_id = $1 AND status IN ${PENDING} ORDER BY seq FOR UPDATE`,
    [input.threadId],
  );
  const events: RunEvent[] = [];
  if (pending.rows.length > 0 && multitask === "reject") {
    throw new CapstanError("thread_busy", `thread ${input.threadId} has an active run`, {
      details: { activeRunId: pending.rows[0]!.id },
    });
  }
  if (multitask === "interrupt") {
    // Newest first: cancelling the head last means no doomed run is promoted
    // (and has its input appended) on the way.
    for (const p of [...pending.rows].reverse()) {
      events.push(
        ...(await terminateTx(q, p.id, input.threadId, "cancelled", {
          error: {
            code: "interrupted",
            message: "cancelled by a newer run on the thread (multitask: interrupt)",
          },
        })),
      );
    }
  }
  const ready = pending.rows.length === 0 || multitask === "interrupt";

  const r = await q.query(
    `INSERT INTO runs (tenant_id, thread_id, agent, input, metadata, status, ready, multitask, priority,
                       max_attempts, idempotency_key, request_hash, trace_context)
     VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8, $9, $10, $11, $12) RETURNING *`,
    [
      input.tenantId,
      input.threadId,
      input.agent,
      { role: "user", content: input.content },
      input.metadata ?? {},
      ready,
      multitask,
      input.priority ?? 0,
      input.maxAttempts,
      input.idempotencyKey ?? null,
      input.requestHash ?? null,
      input.traceContext ?? null,
    ],
  );
  let run = toRun(r.rows[0]!);
  if (ready) run = await becomeHeadTx(q, run);
  await assertPendingCapTx(q, input.tenantId, input.defaultMaxPending);
  return { run, created: true, events };
}

/**
 * The pending cap, exact: lock the tenant's increment row of `tenant_pending`
 * (a count kept by triggers on runs, migration 0006) until commit, then check
 * the tenant's count. It is the committed count, without this transaction's
 * own run (its trigger fires at commit), so concurrent enqueues of one tenant
 * decide one at a time, whatever thread or replica. Taken as the
 * transaction's last step, the row is held only while it commits; its other
 * takers (any other move into the pending set, at its commit) wait for nothing
 * more once they hold it: no lock cycle. A refused enqueue rolls back its run with everything else.
 */
async function assertPendingCapTx(q: Queryable, tenantId: string, defaultMaxPending: number): Promise<void> {
  // Shard 0's value is the latest one (the upsert waits for the lock and reads past its
  // snapshot); the other shards only ever decrease, so reading them in this statement's
  // snapshot can only count a run that just left the set: conservative, never over the cap.
  const cap = await q.query<{ pending: string | number; max_pending: number | null }>(
    `WITH inc AS (
       INSERT INTO tenant_pending AS p (tenant_id, shard) VALUES ($1, 0)
       ON CONFLICT (tenant_id, shard) DO UPDATE SET pending = p.pending
       RETURNING pending
     )
     SELECT (SELECT pending FROM inc) +
            (SELECT coalesce(sum(pending), 0) FROM tenant_pending WHERE tenant_id = $1 AND shard > 0) AS pending,
            (SELECT max_pending FROM tenants WHERE id = $1) AS max_pending`,
    [tenantId],
  );
  const limit = cap.rows[0]!.max_pending ?? defaultMaxPending;
  if (Number(cap.rows[0]!.pending) >= limit) {
    throw new CapstanError(
      "too_many_runs",
      `the tenant already has ${limit} queued or active runs; retry later`,
      {
        details: { limit },
      },
    );
  }
}

/** Mark a run as its thread's head: append its input to the history and wake claimers. */
async function becomeHeadTx(q: Queryable, run: Run): Promise<Run> {
  const [seq] = await appendMessages(q, run.threadId, run.id, [{ role: "user", content: run.input.content }]);
  // queued_at restarts here: pickup latency and queue age count time as the
  // thread's head, not time spent behind an earlier run of the same thread.
  const r = await q.query(
    "UPDATE runs SET ready = true, input_seq = $2, queued_at = now() WHERE id = $1 RETURNING *",
    [run.id, seq],
  );
  await q.query("SELECT pg_notify($1, '')", [CHANNELS.runs]);
  return toRun(r.rows[0]!);
}

/**
 * Move a run to a terminal status (the caller holds the thread lock), append
 * its final messages, persist its terminal event, and promote the thread's
 * next run.
 */
async function terminateTx(
  q: Queryable,
  runId: string,
  threadId: string,
  status: "succeeded" | "failed" | "cancelled",
  opts: { error?: RunError; messages?: NewMessage[]; events?: NewEvent[] } = {},
): Promise<RunEvent[]> {
  const r = await q.query(
    `UPDATE runs SET status = $2, ready = false, error = $3, finished_at = now(), updated_at = now(),
       lease_owner = NULL, lease_expires_at = NULL, wait = NULL
     WHERE id = $1 RETURNING *`,
    [runId, status, opts.error ?? null],
  );
  const run = toRun(r.rows[0]!);
  if (opts.messages?.length) await appendMessages(q, threadId, runId, opts.messages);
  const terminal: NewEvent = {
    type: `run.${status}`,
    data: {
      run_id: runId,
      status,
      ...(opts.error ? { error: opts.error } : {}),
      usage: {
        input_tokens: run.usage.inputTokens,
        output_tokens: run.usage.outputTokens,
      },
    },
  };
  const events = await insertEvents(q, runId, [...(opts.events ?? []), terminal]);
  if (status === "cancelled") await q.query("SELECT pg_notify($1, $2)", [CHANNELS.control, runId]);
  await promoteNextTx(q, threadId);
  return events;
}

async function promoteNextTx(q: Queryable, threadId: string): Promise<void> {
  const next = await q.query(
    `SELECT * FROM runs WHERE thread_id = $1 AND status IN ${PENDING} ORDER BY seq LIMIT 1 FOR UPDATE`,
    [threadId],
  );
  const row = next.rows[0];
  if (row && !row.ready) await becomeHeadTx(q, toRun(row));
}

export interface ClaimOptions {
  workerId: string;
  leaseMs: number;
  /** How many tenants to try, in fairness order, before giving up. */
  tenantFanout?: number;
}

/**
 * Claim one run. Tenants are served round-robin (least recently claimed
 * first), so a tenant with 10,000 queued runs does not starve one with 10;
 * within a tenant, by priority then FIFO. Tenants with a concurrency cap are
 * claimed under their row lock so the cap is exact.
 */
export async function claimRun(db: Db, opts: ClaimOptions): Promise<ClaimedRun | null> {
  const tenants = await db.query<{ id: string; max_concurrency: number | null }>(
    `SELECT t.id, t.max_concurrency FROM tenants t
     WHERE EXISTS (SELECT 1 FROM runs r WHERE r.tenant_id = t.id AND r.status = 'queued' AND r.ready)
       -- A tenant at its cap is never claimed, so its last_claimed_at never moves: left in, the
       -- fan-out's first places could all be such tenants and no one else would be served.
       AND (t.max_concurrency IS NULL OR
            (SELECT count(*) FROM runs r WHERE r.tenant_id = t.id AND r.status = 'running') < t.max_concurrency)
     ORDER BY t.last_claimed_at NULLS FIRST, t.id
     LIMIT $1`,
    [opts.tenantFanout ?? 8],
  );
  for (const t of tenants.rows) {
    const run =
      t.max_concurrency === null
        ? await claimInTenant(db, t.id, opts)
        : await db.tx(async (q) => {
            // NO KEY: serialises claimers without blocking FK checks (enqueues) of the tenant.
            await q.query("SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE", [t.id]);
            const running = await q.query<{ n: number }>(
              "SELECT count(*) AS n FROM runs WHERE tenant_id = $1 AND status = 'running'",
              [t.id],
            );
            if (running.rows[0]!.n >= t.max_concurrency!) return null;
            return claimInTenant(q, t.id, opts);
          });
    if (run) return run;
  }
  return null;
}

async function claimInTenant(q: Queryable, tenantId: string, opts: ClaimOptions): Promise<ClaimedRun | null> {
  const r = await q.query(
    `WITH c AS (
       SELECT id FROM runs
       WHERE tenant_id = $1 AND status = 'queued' AND ready
       ORDER BY priority DESC, seq
       LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED
     ), u AS (
       UPDATE runs r SET status = 'running', attempts = r.attempts + 1, lease_owner = $2,
         lease_expires_at = now() + make_interval(secs => $3::float8 / 1000),
         lease_epoch = r.lease_epoch + 1, started_at = coalesce(r.started_at, now()), updated_at = now(),
         claim_progress = ${journalProgressSql("r.id")}
       FROM c WHERE r.id = c.id
       RETURNING r.*
     ), t AS (
       UPDATE tenants SET last_claimed_at = clock_timestamp()
       WHERE id = $1 AND EXISTS (SELECT 1 FROM u)
     )
     SELECT * FROM u`,
    [tenantId, opts.workerId, opts.leaseMs],
  );
  if (!r.rows[0]) return null;
  const run = toRun(r.rows[0]);
  return {
    ...run,
    lease: { runId: run.id, epoch: run.leaseEpoch, workerId: opts.workerId },
    traceContext: toTraceContext(r.rows[0].trace_context),
  };
}

/**
 * Extend the leases a worker holds, in one statement. Returns the ids still
 * held; any lease missing from the answer is lost (reclaimed, cancelled) and
 * the worker must abort that run's local work.
 */
export async function heartbeat(db: Queryable, leases: Lease[], leaseMs: number): Promise<Set<string>> {
  if (leases.length === 0) return new Set();
  const r = await db.query<{ id: string }>(
    `UPDATE runs SET lease_expires_at = now() + make_interval(secs => $3::float8 / 1000), updated_at = now()
     FROM unnest($1::uuid[], $2::int[]) AS h(id, epoch)
     WHERE runs.id = h.id AND runs.lease_epoch = h.epoch AND runs.status = 'running'
     RETURNING runs.id`,
    [leases.map((l) => l.runId), leases.map((l) => l.epoch), leaseMs],
  );
  return new Set(r.rows.map((x) => x.id));
}

/**
 * Check the lease inside a transaction and lock the run row against
 * concurrent claims until commit. Throws LeaseLostError when not held.
 */
export async function assertLeaseTx(q: Queryable, lease: Lease): Promise<Run> {
  const r = await q.query(
    "SELECT * FROM runs WHERE id = $1 AND lease_epoch = $2 AND status = 'running' FOR NO KEY UPDATE",
    [lease.runId, lease.epoch],
  );
  if (!r.rows[0]) throw new LeaseLostError(lease.runId, lease.epoch);
  return toRun(r.rows[0]);
}

/**
 * Graceful hand-off (worker shutdown): the run goes back to the queue at
 * once, without burning an attempt (`attempts` is taken back, the stall count
 * is never raised, and reset when this attempt made progress), and the epoch
 * moves so any write still in flight from this worker is fenced.
 */
export async function releaseRun(db: Db, lease: Lease): Promise<boolean> {
  const r = await db.query(
    `UPDATE runs SET status = 'queued', attempts = greatest(attempts - 1, 0), lease_owner = NULL,
       lease_expires_at = NULL, lease_epoch = lease_epoch + 1, queued_at = now(), updated_at = now(),
       stalled_attempts = CASE WHEN ${PROGRESSED} THEN 0 ELSE stalled_attempts END, claim_progress = NULL
     WHERE id = $1 AND lease_epoch = $2 AND status = 'running'`,
    [lease.runId, lease.epoch],
  );
  if (r.rowCount) await db.query("SELECT pg_notify($1, '')", [CHANNELS.runs]);
  return (r.rowCount ?? 0) > 0;
}

export interface ReclaimResult {
  requeued: string[];
  failed: string[];
}

/**
 * Put runs whose lease expired back in the queue, with a new epoch (fencing
 * the old owner at once), unless losing this attempt exhausts the run.
 * `runs.attempts` counts claims; what is charged is `stalled_attempts`,
 * the consecutive lost attempts that journaled nothing new: an attempt that
 * made progress resets it, so worker churn alone never fails a run. The
 * caller holds the rows (locked by an earlier statement of its transaction:
 * this statement's snapshot then sees every step their owners committed).
 * Returns the ids requeued; the others would exhaust their run.
 */
async function requeueExpiredTx(q: Queryable, ids: string[]): Promise<string[]> {
  const r = await q.query<{ id: string }>(
    `WITH p AS (SELECT runs.id, ${PROGRESSED} AS progressed FROM runs WHERE runs.id = ANY($1::uuid[]))
     UPDATE runs r SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL,
       lease_epoch = r.lease_epoch + 1, queued_at = now(), updated_at = now(), claim_progress = NULL,
       stalled_attempts = CASE WHEN p.progressed THEN 0 ELSE r.stalled_attempts + 1 END
     FROM p WHERE r.id = p.id AND (p.progressed OR r.stalled_attempts + 1 < r.max_attempts)
     RETURNING r.id`,
    [ids],
  );
  return r.rows.map((x) => x.id);
}

/**
 * Runs whose lease expired (worker crashed, stalled or partitioned) go back
 * to the queue (see `requeueExpiredTx`); a run whose lost attempts made no
 * progress `max_attempts` times in a row fails with `attempts_exhausted`,
 * naming the step it never got past.
 */
export async function reclaimExpired(db: Db, limit = 100): Promise<ReclaimResult> {
  const out: ReclaimResult = { requeued: [], failed: [] };
  const exhausted = await db.tx(async (q) => {
    // SKIP LOCKED: a row held by a (late) fenced write of its owner is left for the next sweep.
    const expired = await q.query<{ id: string; thread_id: string }>(
      `SELECT id, thread_id FROM runs WHERE status = 'running' AND lease_expires_at < now()
       ORDER BY lease_expires_at LIMIT $1 FOR NO KEY UPDATE SKIP LOCKED`,
      [limit],
    );
    if (expired.rows.length === 0) return [];
    out.requeued = await requeueExpiredTx(
      q,
      expired.rows.map((x) => x.id),
    );
    const requeued = new Set(out.requeued);
    return expired.rows.filter((x) => !requeued.has(x.id));
  });
  // Failing a run takes its thread's lock first (lock order: thread, then runs): one transaction each.
  for (const row of exhausted) {
    const outcome = await db.tx(async (q) => {
      await lockThread(q, row.thread_id);
      const still = await q.query<{ stalled_attempts: number }>(
        `SELECT stalled_attempts FROM runs WHERE id = $1 AND status = 'running' AND lease_expires_at < now()
         FOR UPDATE SKIP LOCKED`,
        [row.id],
      );
      if (!still.rows[0]) return "gone";
      // Its owner may have journaled a step since the first look: then it is requeued after all.
      if ((await requeueExpiredTx(q, [row.id])).length > 0) return "requeued";
      const step = stuckStep(await readJournal(q, row.id));
      await q.query(
        "UPDATE runs SET lease_epoch = lease_epoch + 1, stalled_attempts = stalled_attempts + 1 WHERE id = $1",
        [row.id],
      );
      await terminateTx(q, row.id, row.thread_id, "failed", {
        error: attemptsExhausted(step, still.rows[0].stalled_attempts + 1),
      });
      return "failed";
    });
    if (outcome === "failed") out.failed.push(row.id);
    if (outcome === "requeued") out.requeued.push(row.id);
  }
  if (out.requeued.length) await db.query("SELECT pg_notify($1, '')", [CHANNELS.runs]);
  return out;
}

export interface FinishInput {
  status: "succeeded" | "failed";
  /** Final messages (assistant, tool) appended to the thread with the next seqs. */
  messages?: NewMessage[];
  error?: RunError;
  /** Coarse events to persist before the terminal one. */
  events?: NewEvent[];
}

/** Finish a run the caller holds, in one transaction (fenced). */
export async function finishRun(
  db: Db,
  lease: Lease,
  threadId: string,
  input: FinishInput,
): Promise<RunEvent[]> {
  return db.tx(async (q) => {
    await lockThread(q, threadId);
    await assertLeaseTx(q, lease);
    return terminateTx(q, lease.runId, threadId, input.status, input);
  });
}

/** Park a run in `waiting` (approval, unknown side-effect outcome). Holds no worker. */
export async function suspendRun(
  db: Db,
  lease: Lease,
  wait: Record<string, unknown>,
  events: NewEvent[] = [],
): Promise<RunEvent[]> {
  return db.tx(async (q) => {
    await assertLeaseTx(q, lease);
    await q.query(
      `UPDATE runs SET status = 'waiting', wait = $2, lease_owner = NULL, lease_expires_at = NULL,
         lease_epoch = lease_epoch + 1, updated_at = now()
       WHERE id = $1`,
      [lease.runId, wait],
    );
    return insertEvents(q, lease.runId, [
      ...events,
      { type: "run.waiting", data: { run_id: lease.runId, wait } },
    ]);
  });
}

/** Resume a waiting run with a decision; it is queued again at the head of its thread. */
export async function resumeRun(
  db: Db,
  tenantId: string,
  runId: string,
  decision: Record<string, unknown>,
): Promise<Run> {
  return db.tx(async (q) => {
    const r = await q.query("SELECT * FROM runs WHERE id = $1 AND tenant_id = $2 FOR UPDATE", [
      runId,
      tenantId,
    ]);
    if (!r.rows[0]) throw new CapstanError("not_found", `run ${runId} not found`);
    const run = toRun(r.rows[0]);
    if (run.status !== "waiting") {
      throw new CapstanError("run_not_waiting", `run ${runId} is ${run.status}, not waiting`, {
        details: { status: run.status },
      });
    }
    const u = await q.query(
      `UPDATE runs SET status = 'queued', resume = $2, attempts = 0, stalled_attempts = 0, queued_at = now(),
         updated_at = now()
       WHERE id = $1 RETURNING *`,
      [runId, { ...decision, wait: run.wait }],
    );
    await q.query("SELECT pg_notify($1, '')", [CHANNELS.runs]);
    return toRun(u.rows[0]!);
  });
}

/**
 * Cancel a queued, running or waiting run. A worker running it is told over
 * NOTIFY and is fenced anyway (its next write finds the run not running).
 * Cancelling a cancelled run is a no-op; a finished run cannot be cancelled.
 */
export async function cancelRun(
  db: Db,
  tenantId: string,
  runId: string,
): Promise<{ run: Run; events: RunEvent[] }> {
  return db.tx(async (q) => {
    const head = await q.query<{ thread_id: string }>(
      "SELECT thread_id FROM runs WHERE id = $1 AND tenant_id = $2",
      [runId, tenantId],
    );
    if (!head.rows[0]) throw new CapstanError("not_found", `run ${runId} not found`);
    const threadId = head.rows[0].thread_id;
    await lockThread(q, threadId);
    const r = await q.query("SELECT * FROM runs WHERE id = $1 FOR UPDATE", [runId]);
    const run = toRun(r.rows[0]!);
    if (run.status === "cancelled") return { run, events: [] };
    if (run.status === "succeeded" || run.status === "failed") {
      throw new CapstanError("run_not_cancellable", `run ${runId} already ${run.status}`, {
        details: { status: run.status },
      });
    }
    const events = await terminateTx(q, runId, threadId, "cancelled", {
      error: { code: "cancelled", message: "cancelled by request" },
    });
    const after = await q.query("SELECT * FROM runs WHERE id = $1", [runId]);
    return { run: toRun(after.rows[0]!), events };
  });
}

export async function getRun(q: Queryable, tenantId: string, runId: string): Promise<Run> {
  const r = await q.query("SELECT * FROM runs WHERE id = $1 AND tenant_id = $2", [runId, tenantId]);
  if (!r.rows[0]) throw new CapstanError("not_found", `run ${runId} not found`);
  return toRun(r.rows[0]);
}

/** Delete finished runs (their steps and events cascade) and old idempotency keys. */
export async function pruneFinished(
  db: Db,
  opts: { runsOlderThanMs: number; idempotencyKeysOlderThanMs: number; limit?: number },
): Promise<{ runs: number; idempotencyKeys: number }> {
  const runs = await db.query(
    `DELETE FROM runs WHERE id IN (
       SELECT id FROM runs WHERE finished_at < now() - make_interval(secs => $1::float8 / 1000) LIMIT $2)`,
    [opts.runsOlderThanMs, opts.limit ?? 1000],
  );
  const keys = await db.query(
    `DELETE FROM idempotency_keys WHERE (tenant_id, key) IN (
       SELECT tenant_id, key FROM idempotency_keys
       WHERE created_at < now() - make_interval(secs => $1::float8 / 1000) LIMIT $2)`,
    [opts.idempotencyKeysOlderThanMs, opts.limit ?? 1000],
  );
  return { runs: runs.rowCount ?? 0, idempotencyKeys: keys.rowCount ?? 0 };
}
