import type { Queryable } from "./db.js";
import type { RunStatus } from "./types.js";

/** Read-only queries the ingress needs beyond the scheduler's. */

export interface RunProgress {
  status: RunStatus;
  /** Id of the last persisted coarse event (0: none yet). */
  lastEventId: number;
}

/**
 * A run's status and last persisted event id: one primary-key lookup, cheap
 * enough for every SSE stream's slow poll. Null when the run no longer exists
 * (pruned). Not tenant-scoped: callers check the tenant once, up front.
 */
export async function getRunProgress(q: Queryable, runId: string): Promise<RunProgress | null> {
  const r = await q.query<{ status: RunStatus; last_event_id: number }>(
    "SELECT status, last_event_id FROM runs WHERE id = $1",
    [runId],
  );
  const row = r.rows[0];
  return row ? { status: row.status, lastEventId: row.last_event_id } : null;
}
