import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDb, type TestDb } from "../../test/support/pg.js";
import { isCapstanError } from "../errors.js";
import { silentLogger } from "../logger.js";
import { loadMigrations, migrate, schemaStatus } from "./migrate.js";

let t: TestDb;
beforeAll(async () => {
  t = await createTestDb({ migrate: false });
});
afterAll(async () => {
  await t?.drop();
});

describe("migrator", () => {
  it("applies every migration once; a second run and concurrent runs are no-ops", async () => {
    const all = await loadMigrations();
    expect((await schemaStatus(t.db)).database).toBe(0);
    const [a, b] = await Promise.all([migrate(t.db, silentLogger()), migrate(t.db, silentLogger())]);
    expect([...a.applied, ...b.applied].sort()).toEqual(all.map((m) => m.name));
    expect((await migrate(t.db, silentLogger())).applied).toEqual([]);
    expect(await schemaStatus(t.db)).toEqual({ database: all.length, code: all.length, current: true });
    const ledger = await t.db.query("SELECT version FROM capstan_migrations");
    expect(ledger.rows.length).toBe(all.length);
  });

  it("refuses a database with a migration this code does not know", async () => {
    await migrate(t.db, silentLogger());
    await t.db.query("INSERT INTO capstan_migrations (version, name) VALUES (9999, '9999_from_the_future')");
    await expect(migrate(t.db, silentLogger())).rejects.toSatisfy(
      (e) => isCapstanError(e, "schema_too_new") && /9999_from_the_future/.test((e as Error).message),
    );
    expect((await schemaStatus(t.db)).current).toBe(false);
    await t.db.query("DELETE FROM capstan_migrations WHERE version = 9999");
  });

  it("rolls back a failing migration whole", async () => {
    const good = await loadMigrations();
    const bad = [
      ...good,
      { version: good.length + 1, name: "bad", sql: "CREATE TABLE x_ok (a int); SELECT 1/0;" },
    ];
    await expect(migrate(t.db, silentLogger(), bad)).rejects.toThrow(/division by zero/);
    const reg = await t.db.query("SELECT to_regclass('x_ok') AS t");
    expect(reg.rows[0]?.t).toBeNull();
  });
});
