import { randomBytes } from "node:crypto";
import pg from "pg";
import { createPgDb, type Db } from "../../src/state/db.js";
import { migrate } from "../../src/state/migrate.js";
import { silentLogger } from "../../src/logger.js";

/** The machine's PostgreSQL; every test file gets its own database on it. */
export const ADMIN_URL = process.env.TEST_DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";

export function urlFor(database: string): string {
  const u = new URL(ADMIN_URL);
  u.pathname = "/" + database;
  return u.toString();
}

export interface TestDb {
  db: Db;
  url: string;
  name: string;
  drop(): Promise<void>;
}

/** A fresh, migrated database. `drop()` force-closes connections and removes it. */
export async function createTestDb(opts: { migrate?: boolean; poolSize?: number } = {}): Promise<TestDb> {
  const name = "capstan_t_" + randomBytes(6).toString("hex");
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = urlFor(name);
  const db = createPgDb({ url, poolSize: opts.poolSize ?? 10, logger: silentLogger() });
  if (opts.migrate !== false) await migrate(db, silentLogger());
  return {
    db,
    url,
    name,
    async drop() {
      await db.close().catch(() => {});
      const a = new pg.Client({ connectionString: ADMIN_URL });
      await a.connect();
      try {
        await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await a.end();
      }
    },
  };
}

/** Poll until `check` returns a truthy value or the deadline passes. */
export async function until<T>(
  check: () => Promise<T | undefined | null | false> | T | undefined | null | false,
  opts: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 20_000);
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${opts.what ?? "condition"}`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 25));
  }
}
