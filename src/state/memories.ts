/**
 * Long-term memories (docs/architecture.md#bounded-context-and-memory): per tenant and namespace, with text,
 * metadata, an embedding, timestamps and an optional TTL.
 *
 * Two search backends share this module and one table (0002_memory.sql):
 * - "pgvector": `embedding` is a pgvector `vector`; search orders by the `<=>`
 *   cosine operator: through a per-dims HNSW index (`ensureVectorIndex`,
 *   approximate nearest neighbours) for large namespaces, by an exact scan
 *   for small ones (`EXACT_SEARCH_MAX_ROWS`).
 * - "exact": the server has no pgvector; `embedding` is `real[]` and search
 *   computes the exact cosine distance of every candidate row in SQL
 *   (`capstan_cosine_distance`): O(n) in the size of the searched namespace.
 * Which one applies is read from the catalog once per Db (`memoryBackend`).
 *
 * Contracts every function keeps:
 * - tenant-scoped: a tenant never reads, changes or learns of another's rows;
 * - expired memories (expires_at <= now()) are never returned;
 * - embeddings are stored L2-normalised (so cosine distance = 1 - dot);
 * - a search compares only vectors of the same model (and so dims);
 * - inputs are bounded (`MEMORY_LIMITS`); violations throw `validation_failed`
 *   with `fields`.
 *
 * Writes and reads use the same SQL on both backends: the embedding is sent
 * as a real[] parameter, which PostgreSQL assigns to a `vector` column through
 * pgvector's real[] → vector assignment cast.
 */
import { CapstanError, type FieldIssue } from "../errors.js";
import type { Db, Queryable } from "./db.js";

export type MemoryBackend = "pgvector" | "exact";

export const MEMORY_LIMITS = Object.freeze({
  /** Max results of one search. */
  maxK: 100,
  /** Max memory text, UTF-8 bytes. */
  maxTextBytes: 32 * 1024,
  /** Max metadata (and search filter), as JSON, UTF-8 bytes. */
  maxMetadataBytes: 8 * 1024,
  maxNamespaceChars: 256,
  maxKeyChars: 256,
  maxModelChars: 256,
  /** pgvector's limit for a stored vector. */
  maxDims: 16_000,
  /** Max rows per list page. */
  maxListLimit: 1000,
});

/** HNSW indexes `vector` up to 2000 dims and `halfvec` up to 4000; above that, search is exact. */
const MAX_VECTOR_INDEX_DIMS = 2000;
const MAX_HALFVEC_INDEX_DIMS = 4000;

export interface Memory {
  id: string;
  tenantId: string;
  namespace: string;
  /** Caller-chosen key, unique per (tenant, namespace); null for keyless memories. */
  key: string | null;
  text: string;
  metadata: Record<string, unknown>;
  /** The embedder id that produced the stored embedding (see src/agent/embeddings.ts). */
  embeddingModel: string;
  dims: number;
  createdAt: Date;
  updatedAt: Date;
  expiresAt: Date | null;
}

export interface PutMemoryInput {
  namespace: string;
  /**
   * With a key, the write is an upsert on (tenant, namespace, key): the row
   * keeps its id and created_at and gets the new text, metadata, embedding and
   * expiry. Without, every call inserts a new memory.
   */
  key?: string | null;
  text: string;
  metadata?: Record<string, unknown>;
  /** Any non-zero vector; stored L2-normalised. */
  embedding: readonly number[];
  embeddingModel: string;
  /** Time to live from now, ms. Omitted or null: never expires. */
  ttlMs?: number | null;
}

export interface PutMemoryResult {
  memory: Memory;
  /** False when an existing live memory with the same key was updated. */
  created: boolean;
}

/** A memory by id, or by (namespace, key). */
export type MemoryRef = { id: string } | { namespace: string; key: string };

export interface ListMemoriesOptions {
  namespace: string;
  /** 1..MEMORY_LIMITS.maxListLimit. */
  limit: number;
  /** `next` of the previous page; absent for the first. */
  cursor?: string | null;
}

export interface MemoryPage {
  /** In (created_at, id) order. */
  memories: Memory[];
  /** Opaque cursor of the next page; null on the last. */
  next: string | null;
}

export interface SearchMemoriesOptions {
  namespace: string;
  /** The query embedding, from the same model as `embeddingModel`. */
  embedding: readonly number[];
  embeddingModel: string;
  /** 1..MEMORY_LIMITS.maxK. */
  k: number;
  /** Metadata containment (`metadata @> filter`), e.g. `{ "kind": "preference" }`. */
  filter?: Record<string, unknown> | null;
  /** Drop matches farther than this cosine distance (0..2). */
  maxDistance?: number | null;
  /**
   * pgvector only: a namespace with at most this many memories is searched
   * exactly (all its rows, no index) instead of through HNSW. Default
   * EXACT_SEARCH_MAX_ROWS; 0 always uses the index.
   */
  exactBelow?: number;
}

/**
 * On pgvector, namespaces up to this size are searched exactly. The HNSW
 * index is shared by every tenant and namespace, so for a small namespace
 * (the usual per-end-user case) an index scan must skip past other
 * namespaces' neighbours and can stop (hnsw.max_scan_tuples) before finding
 * them all; scanning a few thousand rows with pgvector's C operator is both
 * exact and a few milliseconds.
 */
export const EXACT_SEARCH_MAX_ROWS = 5000;

export interface MemoryMatch {
  memory: Memory;
  /** Cosine distance to the query: 0 identical direction, 1 orthogonal, 2 opposite. */
  distance: number;
}

/* ------------------------------------------------------------------------- */
/* Backend detection and the SQL that differs between backends.              */

interface BackendInfo {
  backend: MemoryBackend;
  /** pgvector's version (e.g. "0.8.1"); null on the exact backend. */
  version: string | null;
  /** How to name pgvector objects: "" when on the search_path, else `"schema".`. */
  schemaPrefix: string;
}

const backends = new WeakMap<Db, Promise<BackendInfo>>();

/**
 * Which search backend this database uses, read from the type of
 * `memories.embedding` once per Db (a failed read is retried next call).
 * Requires migration 0002.
 */
export async function memoryBackend(db: Db): Promise<MemoryBackend> {
  return (await backendInfo(db)).backend;
}

/** A one-line description for the start-up log: says clearly when search is the exact fallback. */
export function describeMemoryBackend(backend: MemoryBackend): string {
  return backend === "pgvector"
    ? "memory search: pgvector (HNSW, approximate nearest neighbours)"
    : "memory search: pgvector is NOT available on this PostgreSQL server; using the exact fallback " +
        "(O(n) cosine scan of the searched namespace). Install pgvector for indexed search " +
        "(see src/state/migrations/0002_memory.sql)";
}

function backendInfo(db: Db): Promise<BackendInfo> {
  let p = backends.get(db);
  if (!p) {
    p = readBackendInfo(db);
    backends.set(db, p);
    p.catch(() => backends.delete(db));
  }
  return p;
}

async function readBackendInfo(q: Queryable): Promise<BackendInfo> {
  const r = await q.query<{ base_type: string | null; schema: string | null; version: string | null }>(
    `SELECT t.typname AS base_type,
            CASE WHEN t.typname = 'vector' AND NOT pg_catalog.pg_type_is_visible(t.oid)
                 THEN n.nspname END AS schema,
            (SELECT extversion FROM pg_extension WHERE extname = 'vector') AS version
     FROM pg_attribute a
     JOIN pg_type t ON t.oid = a.atttypid
     JOIN pg_namespace n ON n.oid = t.typnamespace
     WHERE a.attrelid = to_regclass('memories') AND a.attname = 'embedding' AND NOT a.attisdropped`,
  );
  const row = r.rows[0];
  if (!row) {
    throw new CapstanError("internal", "table memories is missing: run the migrations (0002_memory)");
  }
  if (row.base_type !== "vector") return { backend: "exact", version: null, schemaPrefix: "" };
  return {
    backend: "pgvector",
    version: row.version,
    schemaPrefix: row.schema === null ? "" : `${quoteIdent(row.schema)}.`,
  };
}

function quoteIdent(s: string): string {
  return `"${s.replace(/"/g, '""')}"`;
}

/**
 * The indexable pgvector expressions for one dims. The search's ORDER BY must
 * be exactly `column <=> query` of the index expression for the planner to
 * use the partial HNSW index, so both are built here and nowhere else. `dims`
 * is a validated integer, inlined because a type modifier cannot be a
 * parameter (and a literal lets the planner match the `dims = N` predicate).
 */
function vectorSql(
  info: BackendInfo,
  dims: number,
  column: string,
  queryParam: string,
): { indexed: string; distance: string; opclass: string | null } {
  const p = info.schemaPrefix;
  const op = p === "" ? "<=>" : `OPERATOR(${p}<=>)`;
  // halfvec (pgvector >= 0.7) indexes up to 4000 dims; above what can be
  // indexed, the search is an exact scan with pgvector's operator.
  const halfOk = versionAtLeast(info.version, [0, 7, 0]);
  const half = halfOk && dims > MAX_VECTOR_INDEX_DIMS && dims <= MAX_HALFVEC_INDEX_DIMS;
  const indexable = dims <= MAX_VECTOR_INDEX_DIMS || half;
  const type = `${p}${half ? "halfvec" : "vector"}(${dims})`;
  const indexed = `(${column}::${type})`;
  return {
    indexed,
    distance: `${indexed} ${op} (${queryParam}::real[]::${type})`,
    opclass: indexable ? `${p}${half ? "halfvec" : "vector"}_cosine_ops` : null,
  };
}

/** "0.8.1" >= "0.8.0" */
function versionAtLeast(v: string | null, min: [number, number, number]): boolean {
  if (v === null) return false;
  const parts = v.split(".").map((x) => Number.parseInt(x, 10));
  for (let i = 0; i < 3; i++) {
    const a = parts[i] ?? 0;
    const b = min[i] ?? 0;
    if (a !== b) return a > b;
  }
  return true;
}

const indexes = new WeakMap<Db, Map<number, Promise<boolean>>>();
// Serialises index creation across processes (arbitrary constant, "memi").
const INDEX_LOCK_KEY = 0x6d65_6d69;

/**
 * Makes sure the HNSW (cosine) index for embeddings of `dims` dimensions
 * exists: a partial expression index `(embedding::vector(dims)) WHERE dims =
 * dims` (halfvec for 2001..4000 dims). Call it at start-up with the
 * configured embedder's dims; it is memoised per Db and cheap when the index
 * exists. Returns true when an index exists, false on the exact backend or
 * above 4000 dims (2000 before pgvector 0.7; HNSW's limit: such searches
 * stay exact scans).
 *
 * The index is built with a plain CREATE INDEX under an advisory lock (two
 * starting processes never build it twice). That blocks memory writes while
 * it builds, which is instant for a new dims (no rows of that dims yet). To
 * add an index for a dims that already has many rows, run the CREATE INDEX
 * CONCURRENTLY by hand first (same name and definition; see `vectorIndexName`).
 */
export function ensureVectorIndex(db: Db, dims: number): Promise<boolean> {
  if (!validDims(dims)) {
    return Promise.reject(validationError([{ field: "dims", message: DIMS_MESSAGE }]));
  }
  let perDb = indexes.get(db);
  if (!perDb) {
    perDb = new Map();
    indexes.set(db, perDb);
  }
  let p = perDb.get(dims);
  if (!p) {
    p = createVectorIndex(db, dims);
    perDb.set(dims, p);
    const m = perDb;
    p.catch(() => m.delete(dims));
  }
  return p;
}

/** The name of the HNSW index for one dims. */
export function vectorIndexName(dims: number): string {
  return `memories_hnsw_${dims}`;
}

async function createVectorIndex(db: Db, dims: number): Promise<boolean> {
  const info = await backendInfo(db);
  if (info.backend !== "pgvector") return false;
  const v = vectorSql(info, dims, "embedding", "NULL");
  if (v.opclass === null) return false;
  const name = vectorIndexName(dims);
  const exists = await db.query<{ valid: boolean | null }>(
    `SELECT i.indisvalid AS valid FROM pg_index i WHERE i.indexrelid = to_regclass($1)`,
    [name],
  );
  if (exists.rows[0]?.valid === true) return true;
  await db.tx(async (q) => {
    await q.query("SELECT pg_advisory_xact_lock($1)", [INDEX_LOCK_KEY]);
    // An invalid leftover of an interrupted CONCURRENTLY build would make
    // IF NOT EXISTS a no-op: replace it.
    if (exists.rows[0]?.valid === false) await q.query(`DROP INDEX IF EXISTS ${name}`);
    await q.query(
      `CREATE INDEX IF NOT EXISTS ${name} ON memories USING hnsw (${v.indexed} ${v.opclass})
       WHERE dims = ${dims}`,
    );
  });
  return true;
}

/* ------------------------------------------------------------------------- */
/* Validation.                                                               */

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function validationError(issues: FieldIssue[]): CapstanError {
  return new CapstanError("validation_failed", issues.map((i) => `${i.field}: ${i.message}`).join("; "), {
    fields: issues,
  });
}

function invalid(issues: FieldIssue[]): never {
  throw validationError(issues);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const DIMS_MESSAGE = `must be an integer 1..${MEMORY_LIMITS.maxDims}`;
const validDims = (dims: number): boolean =>
  Number.isSafeInteger(dims) && dims >= 1 && dims <= MEMORY_LIMITS.maxDims;

function checkString(
  issues: FieldIssue[],
  field: string,
  v: unknown,
  maxChars: number,
  opts: { nullable?: boolean } = {},
): void {
  if (v === undefined || v === null) {
    if (!opts.nullable) issues.push({ field, message: "is required" });
    return;
  }
  if (typeof v !== "string" || v.length === 0) {
    issues.push({ field, message: "must be a non-empty string" });
  } else if (v.length > maxChars) {
    issues.push({ field, message: `must be at most ${maxChars} characters` });
  } else if (v.includes("\u0000")) {
    issues.push({ field, message: "must not contain NUL characters" });
  }
}

function checkJsonObject(issues: FieldIssue[], field: string, v: unknown): string | null {
  if (!isPlainObject(v)) {
    issues.push({ field, message: "must be a JSON object" });
    return null;
  }
  let json: string;
  try {
    json = JSON.stringify(v);
  } catch {
    issues.push({ field, message: "must be JSON-serialisable" });
    return null;
  }
  if (Buffer.byteLength(json, "utf8") > MEMORY_LIMITS.maxMetadataBytes) {
    issues.push({ field, message: `must be at most ${MEMORY_LIMITS.maxMetadataBytes} bytes as JSON` });
    return null;
  }
  if (json.includes("\\u0000")) {
    issues.push({ field, message: "must not contain NUL characters" });
    return null;
  }
  return json;
}

/** Validates and L2-normalises an embedding (null after recording an issue). */
function normalisedEmbedding(issues: FieldIssue[], field: string, v: unknown): number[] | null {
  if (!Array.isArray(v) || v.length === 0 || v.length > MEMORY_LIMITS.maxDims) {
    issues.push({ field, message: `must be an array of 1..${MEMORY_LIMITS.maxDims} numbers` });
    return null;
  }
  let sum = 0;
  for (const x of v as unknown[]) {
    if (typeof x !== "number" || !Number.isFinite(x)) {
      issues.push({ field, message: "must contain only finite numbers" });
      return null;
    }
    sum += x * x;
  }
  const norm = Math.sqrt(sum);
  if (!(norm > 0)) {
    issues.push({ field, message: "must not be the zero vector (cosine distance is undefined)" });
    return null;
  }
  return (v as number[]).map((x) => x / norm);
}

function checkId(id: string): void {
  if (!UUID.test(id)) invalid([{ field: "id", message: "must be a UUID" }]);
}

/* ------------------------------------------------------------------------- */
/* Rows.                                                                     */

// Every column but the embedding (large, and never needed by callers).
const COLUMNS = `m.id, m.tenant_id, m.namespace, m.key, m.text, m.metadata, m.embedding_model, m.dims,
  m.created_at, m.updated_at, m.expires_at`;
const LIVE = "(m.expires_at IS NULL OR m.expires_at > now())";

function toMemory(r: Record<string, unknown>): Memory {
  return {
    id: r.id as string,
    tenantId: r.tenant_id as string,
    namespace: r.namespace as string,
    key: (r.key as string | null) ?? null,
    text: r.text as string,
    metadata: r.metadata as Record<string, unknown>,
    embeddingModel: r.embedding_model as string,
    dims: r.dims as number,
    createdAt: r.created_at as Date,
    updatedAt: r.updated_at as Date,
    expiresAt: (r.expires_at as Date | null) ?? null,
  };
}

/* ------------------------------------------------------------------------- */
/* Operations.                                                               */

/**
 * Stores a memory: an insert, or with `key` an upsert on (tenant, namespace,
 * key). Upserting over an expired memory counts as creating it (new
 * created_at). Throws `validation_failed` on out-of-bounds input.
 */
export async function putMemory(
  q: Queryable,
  tenantId: string,
  input: PutMemoryInput,
): Promise<PutMemoryResult> {
  const issues: FieldIssue[] = [];
  checkString(issues, "namespace", input.namespace, MEMORY_LIMITS.maxNamespaceChars);
  checkString(issues, "key", input.key, MEMORY_LIMITS.maxKeyChars, { nullable: true });
  checkString(issues, "embeddingModel", input.embeddingModel, MEMORY_LIMITS.maxModelChars);
  if (typeof input.text !== "string" || input.text.length === 0) {
    issues.push({ field: "text", message: "must be a non-empty string" });
  } else if (Buffer.byteLength(input.text, "utf8") > MEMORY_LIMITS.maxTextBytes) {
    issues.push({ field: "text", message: `must be at most ${MEMORY_LIMITS.maxTextBytes} bytes (UTF-8)` });
  } else if (input.text.includes("\u0000")) {
    issues.push({ field: "text", message: "must not contain NUL characters" });
  }
  const metadata = checkJsonObject(issues, "metadata", input.metadata ?? {});
  const embedding = normalisedEmbedding(issues, "embedding", input.embedding);
  const ttl = input.ttlMs ?? null;
  if (ttl !== null && (!Number.isSafeInteger(ttl) || ttl <= 0)) {
    issues.push({ field: "ttlMs", message: "must be a positive integer (milliseconds) or null" });
  }
  if (issues.length > 0 || embedding === null) invalid(issues);

  const r = await q.query(
    // created: a fresh insert (xmax = 0 on a tuple no one has updated), or
    // an upsert over a memory that had expired (it was gone to readers).
    `WITH prior AS (
       SELECT p.expires_at FROM memories p WHERE p.tenant_id = $1 AND p.namespace = $2 AND p.key = $3
     )
     INSERT INTO memories AS m
       (tenant_id, namespace, key, text, metadata, embedding, embedding_model, dims, expires_at)
     VALUES ($1, $2, $3, $4, $5::jsonb, $6::real[], $7, $8,
             CASE WHEN $9::bigint IS NULL THEN NULL ELSE now() + $9::bigint * interval '1 millisecond' END)
     ON CONFLICT (tenant_id, namespace, key) WHERE key IS NOT NULL DO UPDATE SET
       text = EXCLUDED.text,
       metadata = EXCLUDED.metadata,
       embedding = EXCLUDED.embedding,
       embedding_model = EXCLUDED.embedding_model,
       dims = EXCLUDED.dims,
       expires_at = EXCLUDED.expires_at,
       created_at = CASE WHEN ${LIVE} THEN m.created_at ELSE now() END,
       updated_at = now()
     RETURNING ${COLUMNS},
       m.xmax = 0 OR EXISTS (SELECT 1 FROM prior WHERE prior.expires_at <= now()) AS created`,
    [
      tenantId,
      input.namespace,
      input.key ?? null,
      input.text,
      metadata,
      embedding,
      input.embeddingModel,
      embedding.length,
      ttl,
    ],
  );
  const row = r.rows[0]!;
  return { memory: toMemory(row), created: row.created as boolean };
}

/** A live memory of the tenant. Throws `not_found` (also for another tenant's or an expired memory). */
export async function getMemory(q: Queryable, tenantId: string, ref: MemoryRef): Promise<Memory> {
  let r;
  if ("id" in ref) {
    checkId(ref.id);
    r = await q.query(`SELECT ${COLUMNS} FROM memories m WHERE m.id = $1 AND m.tenant_id = $2 AND ${LIVE}`, [
      ref.id,
      tenantId,
    ]);
  } else {
    r = await q.query(
      `SELECT ${COLUMNS} FROM memories m
       WHERE m.tenant_id = $1 AND m.namespace = $2 AND m.key = $3 AND ${LIVE}`,
      [tenantId, ref.namespace, ref.key],
    );
  }
  const row = r.rows[0];
  if (!row) throw new CapstanError("not_found", `memory ${describeRef(ref)} not found`);
  return toMemory(row);
}

function describeRef(ref: MemoryRef): string {
  return "id" in ref ? ref.id : `${JSON.stringify(ref.namespace)}/${JSON.stringify(ref.key)}`;
}

/**
 * Deletes a memory of the tenant. Returns true when a live memory was
 * deleted, false when there was none (an expired one is deleted too, and
 * reported as absent, as reads would).
 */
export async function deleteMemory(q: Queryable, tenantId: string, ref: MemoryRef): Promise<boolean> {
  let r;
  if ("id" in ref) {
    checkId(ref.id);
    r = await q.query<{ live: boolean }>(
      `DELETE FROM memories m WHERE m.id = $1 AND m.tenant_id = $2 RETURNING ${LIVE} AS live`,
      [ref.id, tenantId],
    );
  } else {
    r = await q.query<{ live: boolean }>(
      `DELETE FROM memories m WHERE m.tenant_id = $1 AND m.namespace = $2 AND m.key = $3
       RETURNING ${LIVE} AS live`,
      [tenantId, ref.namespace, ref.key],
    );
  }
  return r.rows[0]?.live === true;
}

/**
 * Live memories of one namespace in (created_at, id) order, a page at a time.
 * The cursor holds the last row's (created_at in µs, id), so a page is stable
 * even if that row is deleted meanwhile.
 */
export async function listMemories(
  q: Queryable,
  tenantId: string,
  opts: ListMemoriesOptions,
): Promise<MemoryPage> {
  const issues: FieldIssue[] = [];
  checkString(issues, "namespace", opts.namespace, MEMORY_LIMITS.maxNamespaceChars);
  if (!Number.isSafeInteger(opts.limit) || opts.limit < 1 || opts.limit > MEMORY_LIMITS.maxListLimit) {
    issues.push({ field: "limit", message: `must be an integer 1..${MEMORY_LIMITS.maxListLimit}` });
  }
  const after = opts.cursor == null ? null : parseCursor(opts.cursor);
  if (opts.cursor != null && after === null)
    issues.push({ field: "cursor", message: "is not a valid cursor" });
  if (issues.length > 0) invalid(issues);
  const r = await q.query(
    `SELECT ${COLUMNS}, (extract(epoch FROM m.created_at) * 1000000)::bigint AS created_us
     FROM memories m
     WHERE m.tenant_id = $1 AND m.namespace = $2 AND ${LIVE}
       AND ($3::bigint IS NULL OR
            (m.created_at, m.id) > (timestamptz 'epoch' + $3::bigint * interval '1 microsecond', $4::uuid))
     ORDER BY m.created_at, m.id
     LIMIT $5`,
    [tenantId, opts.namespace, after?.createdUs ?? null, after?.id ?? null, opts.limit + 1],
  );
  const rows = r.rows.slice(0, opts.limit);
  const last = rows[rows.length - 1];
  return {
    memories: rows.map(toMemory),
    next:
      r.rows.length > opts.limit && last
        ? Buffer.from(`m1:${String(last.created_us)}:${String(last.id)}`).toString("base64url")
        : null,
  };
}

function parseCursor(cursor: string): { createdUs: string; id: string } | null {
  const m = /^m1:(\d{1,18}):([0-9a-f-]{36})$/i.exec(Buffer.from(cursor, "base64url").toString("utf8"));
  return m && UUID.test(m[2]!) ? { createdUs: m[1]!, id: m[2]! } : null;
}

/**
 * The k live memories of a namespace nearest to `embedding` (cosine), nearest
 * first, with their distances. Only memories embedded by `embeddingModel`
 * are candidates.
 * - Exact backend: scans the namespace (O(n)).
 * - pgvector, namespace of at most `exactBelow` memories: scans it too,
 *   with pgvector's operator (exact).
 * - pgvector, larger namespace: HNSW, approximate. With pgvector >= 0.8 the
 *   scan is iterative, so the tenant/namespace/metadata filters do not starve
 *   the result; a metadata filter matching a tiny share of a huge namespace
 *   can still return fewer than k (the scan stops at hnsw.max_scan_tuples).
 */
export async function searchMemories(
  db: Db,
  tenantId: string,
  opts: SearchMemoriesOptions,
): Promise<MemoryMatch[]> {
  const issues: FieldIssue[] = [];
  checkString(issues, "namespace", opts.namespace, MEMORY_LIMITS.maxNamespaceChars);
  checkString(issues, "embeddingModel", opts.embeddingModel, MEMORY_LIMITS.maxModelChars);
  if (!Number.isSafeInteger(opts.k) || opts.k < 1 || opts.k > MEMORY_LIMITS.maxK) {
    issues.push({ field: "k", message: `must be an integer 1..${MEMORY_LIMITS.maxK}` });
  }
  const filter = opts.filter == null ? null : checkJsonObject(issues, "filter", opts.filter);
  const maxDistance = opts.maxDistance ?? null;
  if (maxDistance !== null && !(typeof maxDistance === "number" && maxDistance >= 0 && maxDistance <= 2)) {
    issues.push({ field: "maxDistance", message: "must be a number 0..2" });
  }
  const embedding = normalisedEmbedding(issues, "embedding", opts.embedding);
  if (issues.length > 0 || embedding === null) invalid(issues);
  const dims = embedding.length;

  const exactBelow = opts.exactBelow ?? EXACT_SEARCH_MAX_ROWS;
  if (!Number.isSafeInteger(exactBelow) || exactBelow < 0) {
    invalid([{ field: "exactBelow", message: "must be a non-negative integer" }]);
  }

  const info = await backendInfo(db);
  const params = [tenantId, opts.namespace, opts.embeddingModel, embedding, filter, maxDistance, opts.k];
  const where = `m.tenant_id = $1 AND m.namespace = $2 AND m.embedding_model = $3 AND m.dims = ${dims}
       AND ${LIVE} AND ($5::jsonb IS NULL OR m.metadata @> $5::jsonb)`;
  // Exact: every candidate's distance, then the k nearest (ties by id). The
  // OFFSET 0 fence keeps the planner from serving the order from an index.
  const exactSql = (distance: string) =>
    `SELECT * FROM (
       SELECT ${COLUMNS}, ${distance} AS distance FROM memories m WHERE ${where} OFFSET 0
     ) s
     WHERE $6::float8 IS NULL OR s.distance <= $6::float8
     ORDER BY s.distance, s.id
     LIMIT $7`;

  if (info.backend === "exact") {
    const r = await db.query(exactSql("capstan_cosine_distance(m.embedding, $4::real[])"), params);
    return r.rows.map(toMatch);
  }

  const v = vectorSql(info, dims, "m.embedding", "$4");
  return db.tx(async (q) => {
    if (exactBelow > 0) {
      // Bounded count: reads at most exactBelow + 1 index entries.
      const c = await q.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM (
           SELECT 1 FROM memories m WHERE m.tenant_id = $1 AND m.namespace = $2 LIMIT $3
         ) s`,
        [tenantId, opts.namespace, exactBelow + 1],
      );
      if ((c.rows[0]?.n ?? 0) <= exactBelow) {
        const r = await q.query(exactSql(v.distance), params);
        return r.rows.map(toMatch);
      }
    }
    // Without these, an HNSW scan yields at most ef_search (default 40) rows
    // before the filters, so k > 40 or a selective filter would return fewer
    // than k. SET LOCAL scope: this transaction only.
    await q.query(
      versionAtLeast(info.version, [0, 8, 0])
        ? "SELECT set_config('hnsw.ef_search', $1, true), set_config('hnsw.iterative_scan', 'strict_order', true)"
        : "SELECT set_config('hnsw.ef_search', $1, true)",
      [String(Math.min(1000, Math.max(40, opts.k * 2)))],
    );
    // ORDER BY the indexed expression itself (not the alias) so the HNSW
    // index can produce the order; the distance bound is applied outside for
    // the same reason.
    const r = await q.query(
      `SELECT * FROM (
         SELECT ${COLUMNS}, ${v.distance} AS distance
         FROM memories m WHERE ${where}
         ORDER BY ${v.distance}
         LIMIT $7
       ) s WHERE $6::float8 IS NULL OR s.distance <= $6::float8
       ORDER BY s.distance`,
      params,
    );
    return r.rows.map(toMatch);
  });
}

function toMatch(r: Record<string, unknown>): MemoryMatch {
  return { memory: toMemory(r), distance: Number(r.distance) };
}

/**
 * Deletes up to `batchSize` expired memories (any tenant) and returns how
 * many. Safe to run from several processes at once (SKIP LOCKED). Reads
 * already hide expired rows; this reclaims their space. Call it periodically
 * and repeat while it returns `batchSize`.
 */
export async function expireMemories(q: Queryable, opts: { batchSize?: number } = {}): Promise<number> {
  const batch = opts.batchSize ?? 1000;
  if (!Number.isSafeInteger(batch) || batch < 1) invalid([{ field: "batchSize", message: "must be >= 1" }]);
  const r = await q.query(
    `DELETE FROM memories WHERE id IN (
       SELECT id FROM memories WHERE expires_at <= now()
       ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)`,
    [batch],
  );
  return r.rowCount ?? 0;
}
