/**
 * An in-memory PGlite Db for the memory tests, optionally with pgvector
 * (@electric-sql/pglite-pgvector). Same construction as createPgliteDb in
 * src/state/db.ts (node-postgres pool of one over PGlite, int8 as number),
 * plus the extension; once createPgliteDb loads pgvector itself these tests
 * can use it directly.
 */
import { PGlite } from "@electric-sql/pglite";
import { createPgConfig } from "@electric-sql/pglite/node-postgres";
import { vector } from "@electric-sql/pglite-pgvector";
import pg from "pg";
import { silentLogger } from "../../src/logger.js";
import type { Db, Queryable } from "../../src/state/db.js";
import { migrate } from "../../src/state/migrate.js";

const types = {
  getTypeParser: ((oid: number, format?: "text" | "binary"): unknown =>
    oid === 20
      ? (v: string) => Number(v)
      : (pg.types.getTypeParser(oid, format) as unknown)) as typeof pg.types.getTypeParser,
};

export async function createMemoryPgliteDb(opts: { pgvector: boolean }): Promise<Db> {
  const lite = await PGlite.create("memory://", opts.pgvector ? { extensions: { vector } } : {});
  const pool = new pg.Pool({ ...createPgConfig(lite), max: 1, types });
  const db: Db = {
    kind: "pglite",
    query: (text, params) => pool.query(text, params),
    async tx<T>(fn: (q: Queryable) => Promise<T>): Promise<T> {
      const client = await pool.connect();
      try {
        await client.query("BEGIN");
        const out = await fn(client);
        await client.query("COMMIT");
        return out;
      } catch (err) {
        await client.query("ROLLBACK");
        throw err;
      } finally {
        client.release();
      }
    },
    listen: () => Promise.reject(new Error("not used by these tests")),
    stats: () => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }),
    async close() {
      await pool.end();
      await lite.close();
    },
  };
  await migrate(db, silentLogger());
  return db;
}
