import { readdir, readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { CapstanError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { Db } from "./db.js";

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

const MIGRATIONS_DIR = fileURLToPath(new URL("./migrations/", import.meta.url));
// Arbitrary constant shared by every Capstan process: serialises migrators.
const MIGRATION_LOCK_KEY = 0x6361_7073; // "caps"

/** The migrations shipped with this build, ordered by version. */
/**
 * The migrations shipped with this build, read once per process (they cannot
 * change while it runs): `/readyz` asks on every probe. A failed read is retried.
 */
export function shippedMigrations(): Promise<Migration[]> {
  shipped ??= loadMigrations().catch((err: unknown) => {
    shipped = undefined;
    throw err;
  });
  return shipped;
}
let shipped: Promise<Migration[]> | undefined;

export async function loadMigrations(dir = MIGRATIONS_DIR): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f)).sort();
  const out: Migration[] = [];
  for (const file of files) {
    const version = Number(file.slice(0, 4));
    out.push({ version, name: file.replace(/\.sql$/, ""), sql: await readFile(dir + file, "utf8") });
  }
  out.forEach((m, i) => {
    if (m.version !== i + 1) throw new Error(`migration numbering has a gap or duplicate at ${m.name}`);
  });
  return out;
}

export interface MigrateResult {
  applied: string[];
  current: number;
}

/**
 * Apply pending migrations, one transaction each, under a transaction-scoped
 * advisory lock so concurrent starters cannot interleave. Refuses a database
 * that has a migration this code does not know (a newer schema), since
 * running old code on it could corrupt data.
 */
export async function migrate(db: Db, logger: Logger, migrations?: Migration[]): Promise<MigrateResult> {
  const all = migrations ?? (await loadMigrations());
  const applied: string[] = [];
  for (const m of all) {
    const did = await db.tx(async (q) => {
      await q.query("SELECT pg_advisory_xact_lock($1)", [MIGRATION_LOCK_KEY]);
      await q.query(`CREATE TABLE IF NOT EXISTS capstan_migrations (
        version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`);
      const done = await q.query<{ version: number; name: string }>(
        "SELECT version, name FROM capstan_migrations ORDER BY version",
      );
      assertKnown(done.rows, all);
      if (done.rows.some((r) => r.version === m.version)) return false;
      await q.query(m.sql);
      await q.query("INSERT INTO capstan_migrations (version, name) VALUES ($1, $2)", [m.version, m.name]);
      return true;
    });
    if (did) {
      applied.push(m.name);
      logger.info({ migration: m.name }, "applied migration");
    }
  }
  return { applied, current: all.length };
}

function assertKnown(done: { version: number; name: string }[], known: Migration[]): void {
  for (const row of done) {
    const k = known.find((m) => m.version === row.version);
    if (!k) {
      throw new CapstanError(
        "schema_too_new",
        `the database has migration ${row.name} (version ${row.version}) which this Capstan build does not know; ` +
          `upgrade Capstan to at least the version that created it`,
        { details: { databaseVersion: Math.max(...done.map((d) => d.version)), codeVersion: known.length } },
      );
    }
    if (k.name !== row.name) {
      throw new CapstanError(
        "schema_too_new",
        `migration ${row.version} in the database is ${row.name} but this build has ${k.name}`,
      );
    }
  }
}

/** Schema status for /readyz: is the database at exactly the code's version? */
export async function schemaStatus(
  db: Db,
  migrations?: Migration[],
): Promise<{ database: number; code: number; current: boolean }> {
  const all = migrations ?? (await shippedMigrations());
  const reg = await db.query<{ t: string | null }>("SELECT to_regclass('capstan_migrations')::text AS t");
  let database = 0;
  if (reg.rows[0]?.t) {
    const r = await db.query<{ v: number | null }>("SELECT max(version) AS v FROM capstan_migrations");
    database = r.rows[0]?.v ?? 0;
  }
  return { database, code: all.length, current: database === all.length };
}
