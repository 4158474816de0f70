/**
 * Memory recall latency with 100,000 memories (issue 9). Not a test: it
 * reports, it asserts nothing.
 *
 *   npm run bench:memory   # DATABASE_URL, or a database capstan_bench_memory on BENCH_ADMIN_URL
 *   BENCH_PGLITE=1 node --import tsx bench/memory-recall.ts   # embedded PGlite + pgvector
 *
 * Migrates the database (as Capstan's start does), creates a throwaway
 * tenant, inserts BENCH_N memories (default 100000) into one namespace plus
 * 1000 into a small one, embedded with local:lexical (BENCH_DIMS, default
 * 256), builds the HNSW index (pgvector only), then times `searchMemories` (k = 10) for BENCH_QUERIES queries per
 * namespace and writes p50/p90/p99 to bench/results/memory-recall.json
 * (memory-recall-pglite.json with BENCH_PGLITE=1).
 * The tenant (and its memories) is deleted at the end unless BENCH_KEEP=1.
 *
 * On the exact backend (no pgvector) a search scans the whole namespace:
 * expect seconds per query for 100,000 rows; that is the documented O(n).
 */
import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import os from "node:os";
import pg from "pg";
import { localLexicalEmbedder } from "../src/agent/embeddings.js";
import { createLogger } from "../src/logger.js";
import { createPgDb, type Db, type Queryable } from "../src/state/db.js";
import { migrate } from "../src/state/migrate.js";
import { ensureVectorIndex, memoryBackend, putMemory, searchMemories } from "../src/state/memories.js";
import { ensureTenant } from "../src/state/tenants.js";

const N = Number(process.env.BENCH_N ?? 100_000);
const SMALL_N = 1000;
const DIMS = Number(process.env.BENCH_DIMS ?? 256);
const K = 10;
const CONCURRENCY = 8;
const logger = createLogger({ level: "info", name: "bench" });

/** Deterministic pseudo-words and sentences, so runs are comparable. */
function makeTextSource(seed: number): () => string {
  let s = seed >>> 0 || 1;
  const rand = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const syllables = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "to",
    "vi",
    "an",
    "el",
    "or",
    "un",
    "ti",
    "po",
    "be",
  ];
  const vocab = Array.from({ length: 3000 }, () =>
    Array.from(
      { length: 2 + Math.floor(rand() * 3) },
      () => syllables[Math.floor(rand() * syllables.length)],
    ).join(""),
  );
  return () =>
    Array.from({ length: 8 + Math.floor(rand() * 12) }, () => vocab[Math.floor(rand() * vocab.length)]).join(
      " ",
    );
}

function percentile(sorted: number[], p: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return Math.round((sorted[i] ?? 0) * 100) / 100;
}

function stats(ms: number[]) {
  const s = [...ms].sort((a, b) => a - b);
  const mean = s.reduce((n, x) => n + x, 0) / Math.max(1, s.length);
  return {
    queries: s.length,
    p50Ms: percentile(s, 50),
    p90Ms: percentile(s, 90),
    p99Ms: percentile(s, 99),
    meanMs: Math.round(mean * 100) / 100,
    maxMs: Math.round((s[s.length - 1] ?? 0) * 100) / 100,
  };
}

async function openDb(): Promise<{ db: Db; target: string }> {
  if (process.env.BENCH_PGLITE === "1") {
    // Embedded mode with pgvector, constructed here until createPgliteDb loads it.
    const { PGlite } = await import("@electric-sql/pglite");
    const { createPgConfig } = await import("@electric-sql/pglite/node-postgres");
    const { vector } = await import("@electric-sql/pglite-pgvector");
    const pg = (await import("pg")).default;
    const lite = await PGlite.create("memory://", { extensions: { vector } });
    const pool = new pg.Pool({ ...createPgConfig(lite), max: 1 });
    const db: Db = {
      kind: "pglite",
      query: (text, params) => pool.query(text, params),
      async tx<T>(fn: (q: Queryable) => Promise<T>): Promise<T> {
        const c = await pool.connect();
        try {
          await c.query("BEGIN");
          const out = await fn(c);
          await c.query("COMMIT");
          return out;
        } catch (err) {
          await c.query("ROLLBACK");
          throw err;
        } finally {
          c.release();
        }
      },
      listen: () => Promise.reject(new Error("unused")),
      stats: () => ({ total: 1, idle: 0, waiting: 0 }),
      async close() {
        await pool.end();
        await lite.close();
      },
    };
    return { db, target: "pglite (memory://) + @electric-sql/pglite-pgvector" };
  }
  const url = process.env.DATABASE_URL ?? (await benchDatabase());
  const u = new URL(url);
  return {
    db: createPgDb({ url, poolSize: CONCURRENCY + 2, logger, statementTimeoutMs: 600_000 }),
    target: `postgres ${u.host}${u.pathname}`,
  };
}

/** Without DATABASE_URL: the database `capstan_bench_memory` on the machine's PostgreSQL, created if missing. */
async function benchDatabase(): Promise<string> {
  const admin = process.env.BENCH_ADMIN_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
  const client = new pg.Client({ connectionString: admin });
  await client.connect();
  try {
    const exists = await client.query("SELECT 1 FROM pg_database WHERE datname = 'capstan_bench_memory'");
    if (exists.rowCount === 0) await client.query("CREATE DATABASE capstan_bench_memory");
  } finally {
    await client.end();
  }
  const u = new URL(admin);
  u.pathname = "/capstan_bench_memory";
  return u.toString();
}

async function insert(
  db: Db,
  tenantId: string,
  namespace: string,
  count: number,
  seed: number,
): Promise<number> {
  const embedder = localLexicalEmbedder(DIMS);
  const next = makeTextSource(seed);
  const started = performance.now();
  let done = 0;
  let lastLog = started;
  const worker = async () => {
    for (;;) {
      if (done >= count) return;
      const batch = Array.from({ length: Math.min(100, count - done) }, () => next());
      done += batch.length;
      const vectors = await embedder.embed(batch);
      for (const [i, text] of batch.entries()) {
        await putMemory(db, tenantId, {
          namespace,
          text,
          embedding: vectors[i]!,
          embeddingModel: embedder.id,
        });
      }
      if (performance.now() - lastLog > 10_000) {
        lastLog = performance.now();
        logger.info({ namespace, inserted: done, of: count }, "inserting");
      }
    }
  };
  await Promise.all(Array.from({ length: db.kind === "pglite" ? 1 : CONCURRENCY }, worker));
  return (performance.now() - started) / 1000;
}

async function timeRecall(db: Db, tenantId: string, namespace: string, queries: number): Promise<number[]> {
  const embedder = localLexicalEmbedder(DIMS);
  const next = makeTextSource(777);
  const texts = Array.from({ length: queries + 3 }, () => next().split(" ").slice(0, 6).join(" "));
  const vectors = await embedder.embed(texts);
  const ms: number[] = [];
  for (const [i, embedding] of vectors.entries()) {
    const t0 = performance.now();
    const got = await searchMemories(db, tenantId, {
      namespace,
      embedding,
      embeddingModel: embedder.id,
      k: K,
    });
    const elapsed = performance.now() - t0;
    if (got.length !== K) throw new Error(`expected ${K} results, got ${got.length}`);
    if (i >= 3) ms.push(elapsed); // the first three warm caches and plans
  }
  return ms;
}

async function main(): Promise<void> {
  const { db, target } = await openDb();
  const started = performance.now();
  try {
    await migrate(db, logger);
    const backend = await memoryBackend(db);
    const queries = Number(process.env.BENCH_QUERIES ?? (backend === "exact" ? 30 : 200));
    const tenant = await ensureTenant(db, `bench-memory-${randomBytes(4).toString("hex")}`);
    logger.info({ target, backend, n: N, dims: DIMS }, "memory recall benchmark");

    const insertBig = await insert(db, tenant.id, "big", N, 1);
    const insertSmall = await insert(db, tenant.id, "small", SMALL_N, 2);
    // Bulk load first, then build the HNSW index (as for an import: much
    // faster than maintaining it per insert, same graph quality). Production
    // creates it at start, when the table has no rows of the dims yet.
    const indexStarted = performance.now();
    if (db.kind === "pglite") await db.query("SET maintenance_work_mem = '512MB'");
    const indexed = await ensureVectorIndex(db, DIMS);
    const indexSeconds = Math.round((performance.now() - indexStarted) / 100) / 10;
    await db.query("ANALYZE memories");
    const big = stats(await timeRecall(db, tenant.id, "big", queries));
    const small = stats(await timeRecall(db, tenant.id, "small", queries));
    const version = await db.query<{ v: string }>("SELECT version() AS v");

    const result = {
      when: new Date().toISOString(),
      target,
      server: version.rows[0]?.v ?? null,
      backend,
      hnswIndex: indexed ? { buildSeconds: indexSeconds } : false,
      embedder: `local:lexical-v1@${DIMS}`,
      k: K,
      insert: {
        rows: N + SMALL_N,
        seconds: Math.round((insertBig + insertSmall) * 10) / 10,
        rowsPerSecond: Math.round((N + SMALL_N) / (insertBig + insertSmall)),
      },
      recall: {
        [`namespace of ${N}`]: big,
        [`namespace of ${SMALL_N} (same table)`]: small,
      },
      machine: {
        cpus: os.cpus().length,
        memoryGiB: Math.round(os.totalmem() / 2 ** 30),
        node: process.version,
      },
      totalSeconds: Math.round((performance.now() - started) / 100) / 10,
    };
    await mkdir(new URL("./results/", import.meta.url), { recursive: true });
    const file = db.kind === "pglite" ? "memory-recall-pglite.json" : "memory-recall.json";
    await writeFile(new URL(`./results/${file}`, import.meta.url), JSON.stringify(result, null, 2) + "\n");
    logger.info(result, `done: bench/results/${file}`);
    if (process.env.BENCH_KEEP !== "1") await db.query("DELETE FROM tenants WHERE id = $1", [tenant.id]);
  } finally {
    await db.close();
  }
}

await main();
