import type { Queryable } from "./db.js";
import { toRun, type Run, type RunStatus } from "./types.js";

/** Operator queries (the CLI): across tenants, bounded, newest first. */

export interface AdminRun extends Run {
  tenantName: string;
}

export async function listRunsForOperator(
  q: Queryable,
  opts: { status?: RunStatus; tenantName?: string; limit: number },
): Promise<AdminRun[]> {
  const r = await q.query(
    `SELECT r.*, t.name AS tenant_name FROM runs r JOIN tenants t ON t.id = r.tenant_id
     WHERE ($1::text IS NULL OR r.status = $1) AND ($2::text IS NULL OR t.name = $2)
     ORDER BY r.seq DESC LIMIT $3`,
    [opts.status ?? null, opts.tenantName ?? null, opts.limit],
  );
  return r.rows.map((row) => ({ ...toRun(row), tenantName: row.tenant_name as string }));
}

/** A run by id regardless of tenant (operators only), or null. */
export async function findRunForOperator(q: Queryable, runId: string): Promise<AdminRun | null> {
  if (!/^[0-9a-f-]{36}$/i.test(runId)) return null;
  const r = await q.query(
    "SELECT r.*, t.name AS tenant_name FROM runs r JOIN tenants t ON t.id = r.tenant_id WHERE r.id = $1",
    [runId],
  );
  const row = r.rows[0];
  return row ? { ...toRun(row), tenantName: row.tenant_name as string } : null;
}
