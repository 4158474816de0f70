import type { Db } from "./db.js";
import type { Lease, RunStatus, Step } from "./types.js";

type StepStatus = Step["status"];

/**
 * What a run (and one of its steps) look like now, for a worker whose write
 * lost its connection with an unknown outcome (src/worker/db-retry.ts): did
 * that write commit?
 *
 * Read in a transaction that first takes the run row `FOR SHARE`. Every
 * write of a run holds that row until it ends (a fenced write's `r` CTE, the
 * lease check of finishing and suspending), so a write still running on the
 * lost connection (a network cut leaves its backend alive) has committed or
 * rolled back before this reads: the answer is final, and a write retried
 * after "not committed" cannot race its lost twin.
 */
export interface WriteState {
  run: { status: RunStatus; leaseEpoch: number; lastEventId: number } | null;
  step: { kind: "llm" | "tool"; status: StepStatus; epoch: number } | null;
}

export async function readWriteState(db: Db, runId: string, stepNo?: number): Promise<WriteState> {
  return db.tx(async (q) => {
    const run = await q.query<{ status: RunStatus; lease_epoch: number; last_event_id: number }>(
      "SELECT status, lease_epoch, last_event_id FROM runs WHERE id = $1 FOR SHARE",
      [runId],
    );
    const step =
      stepNo === undefined
        ? undefined
        : await q.query<{ kind: "llm" | "tool"; status: StepStatus; epoch: number }>(
            "SELECT kind, status, epoch FROM steps WHERE run_id = $1 AND step_no = $2",
            [runId, stepNo],
          );
    const r = run.rows[0];
    const s = step?.rows[0];
    return {
      run: r ? { status: r.status, leaseEpoch: r.lease_epoch, lastEventId: r.last_event_id } : null,
      step: s ? { kind: s.kind, status: s.status, epoch: s.epoch } : null,
    };
  });
}

/**
 * Leases the database says `workerId` holds. After a claim whose answer was
 * lost (src/state/claimer.ts), one of them may be a run the worker never
 * heard of.
 */
export async function leasesOf(db: Db, workerId: string): Promise<Lease[]> {
  const r = await db.query<{ id: string; lease_epoch: number }>(
    "SELECT id, lease_epoch FROM runs WHERE status = 'running' AND lease_owner = $1",
    [workerId],
  );
  return r.rows.map((row) => ({ runId: row.id, epoch: row.lease_epoch, workerId }));
}
