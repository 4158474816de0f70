import { CapstanError } from "../errors.js";
import type { Db, Queryable } from "./db.js";
import { isUniqueViolation } from "./pg-errors.js";

/**
 * Idempotency for API requests that do not create runs (create thread,
 * cancel, resume, memories). Run creation uses `runs.idempotency_key` inside
 * `enqueueRun` instead. Both live in Postgres so a key survives a Redis flush.
 *
 * One (tenant, key) is one effect across all of them: every keyed effect runs
 * under the same transaction-scoped advisory lock (`lockIdempotencyKey`, taken
 * before any row lock) and checks both tables under it, so of two requests
 * racing with one key for different routes, the second sees the first's
 * committed effect and is refused (`idempotency_key_reused`).
 *
 * Contract of `withIdempotencyKey`:
 * - the effect and the stored response commit in ONE transaction: either both
 *   exist or neither does, so a crash can never leave an effect without its
 *   answer (a retry would repeat it) or an answer without its effect;
 * - concurrent requests with the same key are serialised by a
 *   transaction-scoped advisory lock: the second sees the first's answer;
 * - only successful responses are stored: an effect that throws rolls back
 *   and stores nothing, so a retry with the same key runs again;
 * - the same key with a different request hash is `idempotency_key_reused`,
 *   also when the key was already used to create a run.
 */

export interface StoredResponse {
  statusCode: number;
  body: unknown;
}

export interface IdempotencyScope {
  tenantId: string;
  key: string;
  /** Hash of method, path and canonical body: what makes two requests "the same". */
  requestHash: string;
}

export interface IdempotentOutcome<X> {
  response: StoredResponse;
  /** True when the response was stored by an earlier request with this key. */
  replayed: boolean;
  /** Whatever the effect returned besides its response (absent on replay). */
  extra: X | undefined;
}

function reused(key: string): CapstanError {
  return new CapstanError(
    "idempotency_key_reused",
    `Idempotency-Key ${key} was already used with a different request`,
    {
      fields: [{ field: "Idempotency-Key", message: "already used with a different request" }],
    },
  );
}

/**
 * A Db whose `tx` joins the caller's open transaction instead of starting a
 * new one, so state functions that take a `Db` (cancelRun, resumeRun) commit
 * together with the idempotency record. Errors propagate and roll back all.
 */
export function joinTx(q: Queryable, base: Db): Db {
  return {
    kind: base.kind,
    query: (text, params) => q.query(text, params),
    tx: (fn) => fn(q),
    listen: (channel, onNotify, onReconnect) => base.listen(channel, onNotify, onReconnect),
    stats: () => base.stats(),
    close: () => Promise.reject(new Error("a transaction-bound Db cannot be closed")),
  };
}

/**
 * Serialise every use of (tenant, key) until the transaction ends, on every
 * replica. Take it before any row lock (enqueueRun and withIdempotencyKey
 * both do), so it never closes a lock cycle.
 */
export async function lockIdempotencyKey(q: Queryable, tenantId: string, key: string): Promise<void> {
  await q.query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", [`${tenantId}:${key}`]);
}

/** Run `effect` at most once per (tenant, key); see the module comment. */
export async function withIdempotencyKey<X>(
  db: Db,
  scope: IdempotencyScope,
  effect: (db: Db) => Promise<{ response: StoredResponse; extra?: X }>,
): Promise<IdempotentOutcome<X>> {
  try {
    return await db.tx(async (q) => {
      await lockIdempotencyKey(q, scope.tenantId, scope.key);
      const stored = await findStored(q, scope);
      if (stored) return { response: stored, replayed: true, extra: undefined };
      await assertNotUsedByRun(q, scope.tenantId, scope.key);
      const out = await effect(joinTx(q, db));
      await q.query(
        `INSERT INTO idempotency_keys (tenant_id, key, request_hash, status_code, response)
         VALUES ($1, $2, $3, $4, $5)`,
        [
          scope.tenantId,
          scope.key,
          scope.requestHash,
          out.response.statusCode,
          JSON.stringify(out.response.body),
        ],
      );
      return { response: out.response, replayed: false, extra: out.extra };
    });
  } catch (err) {
    // Belt and braces: the advisory lock makes this unreachable between
    // Capstan processes, but a unique violation must still answer correctly.
    if (isUniqueViolation(err)) {
      const stored = await findStored(db, scope);
      if (stored) return { response: stored, replayed: true, extra: undefined };
    }
    throw err;
  }
}

async function findStored(q: Queryable, scope: IdempotencyScope): Promise<StoredResponse | null> {
  const r = await q.query<{ request_hash: string; status_code: number; response: unknown }>(
    "SELECT request_hash, status_code, response FROM idempotency_keys WHERE tenant_id = $1 AND key = $2",
    [scope.tenantId, scope.key],
  );
  const row = r.rows[0];
  if (!row) return null;
  if (row.request_hash !== scope.requestHash) throw reused(scope.key);
  return { statusCode: row.status_code, body: row.response };
}

async function assertNotUsedByRun(q: Queryable, tenantId: string, key: string): Promise<void> {
  const r = await q.query("SELECT 1 FROM runs WHERE tenant_id = $1 AND idempotency_key = $2", [
    tenantId,
    key,
  ]);
  if (r.rows.length > 0) throw reused(key);
}

/**
 * For run creation, under `lockIdempotencyKey`: refuse a key already used by
 * another kind of request (`enqueueRun` itself checks keys used by other runs).
 */
export async function assertKeyNotStored(q: Queryable, tenantId: string, key: string): Promise<void> {
  const r = await q.query("SELECT 1 FROM idempotency_keys WHERE tenant_id = $1 AND key = $2", [
    tenantId,
    key,
  ]);
  if (r.rows.length > 0) throw reused(key);
}
