import type { Queryable } from "./db.js";
import { CHANNELS } from "./channels.js";
import { toEvent, type NewEvent, type RunEvent } from "./types.js";

/**
 * Persist coarse events for a run and allocate their ids from
 * `runs.last_event_id`. The caller must already hold the run row (a fenced
 * UPDATE or FOR UPDATE in the same transaction), which makes the ids
 * gap-free and monotonic. Listeners are told at commit.
 */
export async function insertEvents(q: Queryable, runId: string, events: NewEvent[]): Promise<RunEvent[]> {
  if (events.length === 0) return [];
  const r = await q.query<{ last_event_id: number }>(
    "UPDATE runs SET last_event_id = last_event_id + $2 WHERE id = $1 RETURNING last_event_id",
    [runId, events.length],
  );
  const last = r.rows[0]!.last_event_id;
  const first = last - events.length + 1;
  const ins = await q.query(
    `INSERT INTO run_events (run_id, id, type, data)
     SELECT $1, $2 + e.ord - 1, e.val->>'type', e.val->'data'
     FROM jsonb_array_elements($3::jsonb) WITH ORDINALITY AS e(val, ord)
     RETURNING *`,
    [runId, first, JSON.stringify(events)],
  );
  await q.query("SELECT pg_notify($1, $2)", [CHANNELS.events, `${runId}:${last}`]);
  return ins.rows.map(toEvent).sort((a, b) => a.id - b.id);
}

/** Persisted events of a run with id > after, in order, at most `limit`. */
export async function listEvents(
  q: Queryable,
  runId: string,
  after: number,
  limit: number,
): Promise<RunEvent[]> {
  const r = await q.query("SELECT * FROM run_events WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3", [
    runId,
    after,
    limit,
  ]);
  return r.rows.map(toEvent);
}
