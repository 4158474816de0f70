import { createHash, randomBytes } from "node:crypto";
import { CapstanError } from "../errors.js";
import type { Queryable } from "./db.js";
import { isUniqueViolation } from "./pg-errors.js";

export interface Tenant {
  id: string;
  name: string;
  maxConcurrency: number | null;
  maxPending: number | null;
  createdAt: Date;
}

export interface ApiKeyInfo {
  id: string;
  tenantId: string;
  name: string | null;
  prefix: string;
  createdAt: Date;
  revokedAt: Date | null;
}

const toTenant = (r: Record<string, unknown>): Tenant => ({
  id: r.id as string,
  name: r.name as string,
  maxConcurrency: (r.max_concurrency as number | null) ?? null,
  maxPending: (r.max_pending as number | null) ?? null,
  createdAt: r.created_at as Date,
});

const toKey = (r: Record<string, unknown>): ApiKeyInfo => ({
  id: r.id as string,
  tenantId: r.tenant_id as string,
  name: (r.name as string | null) ?? null,
  prefix: r.prefix as string,
  createdAt: r.created_at as Date,
  revokedAt: (r.revoked_at as Date | null) ?? null,
});

/** Create a tenant, or return the existing one with that name. */
export async function ensureTenant(
  q: Queryable,
  name: string,
  opts: { maxConcurrency?: number | null; maxPending?: number | null } = {},
): Promise<Tenant> {
  const r = await q.query(
    `INSERT INTO tenants (name, max_concurrency, max_pending) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name
     RETURNING *`,
    [name, opts.maxConcurrency ?? null, opts.maxPending ?? null],
  );
  return toTenant(r.rows[0]!);
}

export async function updateTenantLimits(
  q: Queryable,
  tenantId: string,
  limits: { maxConcurrency?: number | null; maxPending?: number | null },
): Promise<void> {
  await q.query(
    `UPDATE tenants SET
       max_concurrency = CASE WHEN $2 THEN $3::int ELSE max_concurrency END,
       max_pending = CASE WHEN $4 THEN $5::int ELSE max_pending END
     WHERE id = $1`,
    [
      tenantId,
      limits.maxConcurrency !== undefined,
      limits.maxConcurrency ?? null,
      limits.maxPending !== undefined,
      limits.maxPending ?? null,
    ],
  );
}

export async function findTenantByName(q: Queryable, name: string): Promise<Tenant | null> {
  const r = await q.query("SELECT * FROM tenants WHERE name = $1", [name]);
  return r.rows[0] ? toTenant(r.rows[0]) : null;
}

export async function getTenant(q: Queryable, id: string): Promise<Tenant | null> {
  const r = await q.query("SELECT * FROM tenants WHERE id = $1", [id]);
  return r.rows[0] ? toTenant(r.rows[0]) : null;
}

export const hashApiKey = (secret: string): Buffer => createHash("sha256").update(secret).digest();

/** Create an API key. The secret is returned once; only its hash is stored. */
export async function createApiKey(
  q: Queryable,
  tenantId: string,
  name?: string,
): Promise<{ key: string; info: ApiKeyInfo }> {
  for (;;) {
    const secret = "cap_" + randomBytes(24).toString("base64url");
    try {
      const r = await q.query(
        "INSERT INTO api_keys (tenant_id, name, key_hash, prefix) VALUES ($1, $2, $3, $4) RETURNING *",
        [tenantId, name ?? null, hashApiKey(secret), secret.slice(0, 10)],
      );
      return { key: secret, info: toKey(r.rows[0]!) };
    } catch (err) {
      // 192 random bits: a collision is practically impossible, but be exact.
      if (!isUniqueViolation(err)) throw err;
    }
  }
}

/** The key with this secret, live or revoked; null when no key has it. */
export async function lookupApiKey(
  q: Queryable,
  secret: string,
): Promise<{ tenantId: string; keyId: string; revoked: boolean } | null> {
  const r = await q.query<{ id: string; tenant_id: string; revoked: boolean }>(
    "SELECT id, tenant_id, revoked_at IS NOT NULL AS revoked FROM api_keys WHERE key_hash = $1",
    [hashApiKey(secret)],
  );
  const row = r.rows[0];
  return row ? { tenantId: row.tenant_id, keyId: row.id, revoked: row.revoked } : null;
}

/** The tenant of a live key, or null (unknown or revoked: callers answer 401 either way). */
export async function authenticateApiKey(
  q: Queryable,
  secret: string,
): Promise<{ tenantId: string; keyId: string } | null> {
  const found = await lookupApiKey(q, secret);
  return found && !found.revoked ? { tenantId: found.tenantId, keyId: found.keyId } : null;
}

export async function listApiKeys(q: Queryable, tenantId?: string): Promise<ApiKeyInfo[]> {
  const r = tenantId
    ? await q.query("SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY created_at", [tenantId])
    : await q.query("SELECT * FROM api_keys ORDER BY created_at");
  return r.rows.map(toKey);
}

/** Revoke by key id or by the displayed prefix. */
export async function revokeApiKey(q: Queryable, idOrPrefix: string): Promise<ApiKeyInfo> {
  const isUuid = /^[0-9a-f-]{36}$/i.test(idOrPrefix);
  // One statement: revoke only when exactly one key matches, so an ambiguous prefix revokes nothing.
  const r = await q.query<{ matches: number } & Record<string, unknown>>(
    `WITH m AS (SELECT id FROM api_keys WHERE ${isUuid ? "id = $1::uuid" : "prefix = $1"}),
     u AS (
       UPDATE api_keys SET revoked_at = coalesce(revoked_at, now())
       WHERE id IN (SELECT id FROM m) AND (SELECT count(*) FROM m) = 1 RETURNING *
     )
     SELECT (SELECT count(*) FROM m)::int AS matches, u.* FROM (SELECT 1) one LEFT JOIN u ON true`,
    [idOrPrefix],
  );
  const matches = r.rows[0]!.matches;
  if (matches === 0) throw new CapstanError("not_found", `no API key ${idOrPrefix}`);
  if (matches > 1)
    throw new CapstanError("validation_failed", `prefix ${idOrPrefix} matches several keys; use the id`);
  return toKey(r.rows[0]!);
}
