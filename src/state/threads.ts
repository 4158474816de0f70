import { CapstanError } from "../errors.js";
import type { Queryable } from "./db.js";
import { toMessage, type Message, type NewMessage } from "./types.js";

export type ThreadStatus = "idle" | "busy" | "waiting";

export interface Thread {
  id: string;
  tenantId: string;
  metadata: Record<string, unknown>;
  status: ThreadStatus;
  lastSeq: number;
  createdAt: Date;
}

export async function createThread(
  q: Queryable,
  tenantId: string,
  metadata: Record<string, unknown> = {},
): Promise<Thread> {
  const r = await q.query("INSERT INTO threads (tenant_id, metadata) VALUES ($1, $2) RETURNING *", [
    tenantId,
    metadata,
  ]);
  const row = r.rows[0]!;
  return {
    id: row.id as string,
    tenantId,
    metadata: row.metadata as Record<string, unknown>,
    status: "idle",
    lastSeq: 0,
    createdAt: row.created_at as Date,
  };
}

/**
 * A thread with its derived status: `waiting` when its head run waits,
 * `busy` when any run is queued or running, else `idle`. Tenant-scoped: a
 * foreign id is not found.
 */
export async function getThread(q: Queryable, tenantId: string, threadId: string): Promise<Thread> {
  const r = await q.query(
    `SELECT t.*,
       (SELECT array_agg(DISTINCT status) FROM runs
         WHERE thread_id = t.id AND status IN ('queued', 'running', 'waiting')) AS pending
     FROM threads t WHERE t.id = $1 AND t.tenant_id = $2`,
    [threadId, tenantId],
  );
  const row = r.rows[0];
  if (!row) throw new CapstanError("not_found", `thread ${threadId} not found`);
  const pending = (row.pending as string[] | null) ?? [];
  return {
    id: row.id as string,
    tenantId,
    metadata: row.metadata as Record<string, unknown>,
    status: pending.includes("waiting") ? "waiting" : pending.length > 0 ? "busy" : "idle",
    lastSeq: row.last_seq as number,
    createdAt: row.created_at as Date,
  };
}

/** Messages with seq > after, in order. Tenant-scoped. */
export async function listMessages(
  q: Queryable,
  tenantId: string,
  threadId: string,
  after: number,
  limit: number,
): Promise<Message[]> {
  const r = await q.query(
    `SELECT m.* FROM messages m JOIN threads t ON t.id = m.thread_id
     WHERE m.thread_id = $1 AND t.tenant_id = $2 AND m.seq > $3
     ORDER BY m.seq LIMIT $4`,
    [threadId, tenantId, after, limit],
  );
  if (r.rows.length === 0) {
    // Distinguish "no more messages" from "no such thread".
    await getThread(q, tenantId, threadId);
  }
  return r.rows.map(toMessage);
}

/** Every message of a thread in order (the worker's view; no tenant check). */
export async function readHistory(
  q: Queryable,
  threadId: string,
  uptoSeq?: number,
  afterSeq?: number,
): Promise<Message[]> {
  const r = await q.query(
    `SELECT * FROM messages WHERE thread_id = $1 AND ($2::bigint IS NULL OR seq <= $2)
       AND ($3::bigint IS NULL OR seq > $3) ORDER BY seq`,
    [threadId, uptoSeq ?? null, afterSeq ?? null],
  );
  return r.rows.map(toMessage);
}

/**
 * Append messages with the next seqs. The caller must hold the thread row
 * lock (`lockThread`) in the same transaction: that is what makes seqs
 * strictly ordered and gap-free.
 */
export async function appendMessages(
  q: Queryable,
  threadId: string,
  runId: string | null,
  messages: NewMessage[],
): Promise<number[]> {
  if (messages.length === 0) return [];
  const r = await q.query<{ last_seq: number }>(
    "UPDATE threads SET last_seq = last_seq + $2, updated_at = now() WHERE id = $1 RETURNING last_seq",
    [threadId, messages.length],
  );
  const last = r.rows[0]!.last_seq;
  const first = last - messages.length + 1;
  await q.query(
    `INSERT INTO messages (thread_id, seq, role, content, run_id)
     SELECT $1, $2 + e.ord - 1, e.val->>'role', e.val->'content', $4
     FROM jsonb_array_elements($3::jsonb) WITH ORDINALITY AS e(val, ord)`,
    [threadId, first, JSON.stringify(messages), runId],
  );
  return messages.map((_, i) => first + i);
}

/** Take the thread row lock; returns false when the thread does not exist for the tenant. */
export async function lockThread(q: Queryable, threadId: string, tenantId?: string): Promise<boolean> {
  const r = await q.query(
    `SELECT 1 FROM threads WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2) FOR NO KEY UPDATE`,
    [threadId, tenantId ?? null],
  );
  return r.rows.length > 0;
}
