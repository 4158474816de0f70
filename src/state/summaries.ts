/**
 * Conversation summaries (bounded context, docs/architecture.md#bounded-context-and-memory:
 * critical state, so in Postgres). A summary's text covers the thread's messages 1..toSeq: each new
 * summary folds the previous one in, and records the first message it added
 * as `fromSeq` (= previous toSeq + 1), so a thread's summaries chain without
 * gaps or overlaps. Messages themselves are never rewritten.
 */
import { CapstanError } from "../errors.js";
import type { Queryable } from "./db.js";

/** Max summary text, UTF-8 bytes (a summary is meant to be a small part of a prompt). */
export const MAX_SUMMARY_BYTES = 64 * 1024;

export interface ThreadSummary {
  threadId: string;
  /** First message folded in by this summary (the previous summary's toSeq + 1). */
  fromSeq: number;
  /** The summary text covers messages 1..toSeq. */
  toSeq: number;
  summary: string;
  runId: string | null;
  createdAt: Date;
}

export interface NewThreadSummary {
  threadId: string;
  fromSeq: number;
  toSeq: number;
  summary: string;
  runId: string | null;
}

function toSummary(r: Record<string, unknown>): ThreadSummary {
  return {
    threadId: r.thread_id as string,
    fromSeq: r.from_seq as number,
    toSeq: r.to_seq as number,
    summary: r.summary as string,
    runId: (r.run_id as string | null) ?? null,
    createdAt: r.created_at as Date,
  };
}

/**
 * The summary covering the most of the thread (or of its messages up to
 * `uptoSeq`: a run only ever looks at history up to its input), or null.
 */
export async function latestSummary(
  q: Queryable,
  threadId: string,
  uptoSeq?: number,
): Promise<ThreadSummary | null> {
  const r = await q.query(
    `SELECT * FROM thread_summaries WHERE thread_id = $1 AND ($2::bigint IS NULL OR to_seq <= $2)
     ORDER BY to_seq DESC LIMIT 1`,
    [threadId, uptoSeq ?? null],
  );
  return r.rows[0] ? toSummary(r.rows[0]) : null;
}

/**
 * Stores a summary; idempotent on (threadId, toSeq): when one with that
 * toSeq exists (a resumed run saving its journaled summary again), it is
 * returned unchanged and the new text is dropped, so a thread never gets two
 * summaries of the same range.
 *
 * A new summary must continue the chain: fromSeq = latest toSeq + 1 (1 for
 * the first). Anything else is a bug in the caller (its plan was made from a
 * stale summary) and throws `journal_conflict` without writing. Callers are
 * the thread's one running run, so there is no race between check and insert;
 * the primary key still guards the range.
 */
export async function saveSummary(q: Queryable, s: NewThreadSummary): Promise<ThreadSummary> {
  if (
    !Number.isSafeInteger(s.fromSeq) ||
    !Number.isSafeInteger(s.toSeq) ||
    s.fromSeq < 1 ||
    s.toSeq < s.fromSeq
  ) {
    throw new CapstanError(
      "validation_failed",
      `summary range ${s.fromSeq}..${s.toSeq} is invalid: need 1 <= fromSeq <= toSeq`,
      { fields: [{ field: "fromSeq", message: "must satisfy 1 <= fromSeq <= toSeq" }] },
    );
  }
  if (s.summary.length === 0 || Buffer.byteLength(s.summary, "utf8") > MAX_SUMMARY_BYTES) {
    throw new CapstanError("validation_failed", `summary text must be 1..${MAX_SUMMARY_BYTES} bytes`, {
      fields: [{ field: "summary", message: `must be 1..${MAX_SUMMARY_BYTES} bytes (UTF-8)` }],
    });
  }
  // Insert only when the range continues the chain; either way return the
  // row for this toSeq (inserted now, or saved earlier).
  const r = await q.query(
    `WITH prev AS (
       SELECT coalesce(max(to_seq), 0) AS to_seq FROM thread_summaries WHERE thread_id = $1::uuid
     ), ins AS (
       INSERT INTO thread_summaries (thread_id, from_seq, to_seq, summary, run_id)
       SELECT $1::uuid, $2::bigint, $3::bigint, $4::text, $5::uuid FROM prev WHERE prev.to_seq = $2::bigint - 1
       ON CONFLICT (thread_id, to_seq) DO NOTHING
       RETURNING *
     )
     SELECT * FROM ins
     UNION ALL
     SELECT * FROM thread_summaries
     WHERE thread_id = $1::uuid AND to_seq = $3::bigint AND NOT EXISTS (SELECT 1 FROM ins)`,
    [s.threadId, s.fromSeq, s.toSeq, s.summary, s.runId],
  );
  const row = r.rows[0];
  if (row) return toSummary(row);
  const latest = await latestSummary(q, s.threadId);
  throw new CapstanError(
    "journal_conflict",
    `summary ${s.fromSeq}..${s.toSeq} of thread ${s.threadId} does not continue the latest summary ` +
      `(which ends at ${latest?.toSeq ?? 0})`,
    {
      details: { threadId: s.threadId, fromSeq: s.fromSeq, toSeq: s.toSeq, latestToSeq: latest?.toSeq ?? 0 },
    },
  );
}
