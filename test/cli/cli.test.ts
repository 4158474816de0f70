import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDb, type TestDb } from "../support/pg.js";
import { spawnCapstan } from "../support/procs.js";

/** The CLI as a user meets it: real processes, exit codes, messages that say what to fix. */

let t: TestDb;
beforeAll(async () => {
  t = await createTestDb({ migrate: false });
});
afterAll(async () => {
  await t?.drop();
});

async function cli(args: string[], env: Record<string, string> = {}) {
  const p = spawnCapstan(args, env);
  const { code } = await p.exited;
  return { code, out: p.output() };
}

describe("capstan CLI", () => {
  it("--help lists every command and exits 0", async () => {
    const r = await cli(["--help"]);
    expect(r.code).toBe(0);
    for (const c of ["dev", "ingress", "worker", "migrate", "keys", "runs"]) expect(r.out).toContain(c);
    const sub = await cli(["keys", "create", "--help"]);
    expect(sub.code).toBe(0);
    expect(sub.out).toContain("--tenant");
  });

  it("says what to fix when PostgreSQL is unreachable or unset, or a setting is wrong", async () => {
    const down = await cli(["worker"], { DATABASE_URL: "postgres://postgres@127.0.0.1:1/capstan" });
    expect(down.code).toBe(1);
    expect(down.out).toMatch(/cannot reach PostgreSQL at 127\.0\.0\.1:1\/capstan/);
    expect(down.out).toMatch(/set DATABASE_URL/);
    const unset = await cli(["worker"]);
    expect(unset.code).toBe(2);
    expect(unset.out).toMatch(/needs PostgreSQL: set DATABASE_URL/);
    const badPort = await cli(["ingress"], { DATABASE_URL: t.url, PORT: "eighty" });
    expect(badPort.code).toBe(2);
    expect(badPort.out).toMatch(/http\.port.*environment variable PORT/);
    const usage = await cli(["keys", "create"]);
    expect(usage.code).toBe(2);
    expect(usage.out).toMatch(/--tenant/);
  });

  it("migrates, manages keys and inspects runs against a real database", async () => {
    const env = { DATABASE_URL: t.url };
    const m = await cli(["migrate"], env);
    expect(m.code, m.out).toBe(0);
    expect(m.out).toMatch(/applied: 0001_init/);
    expect((await cli(["migrate"], env)).out).toMatch(/nothing to apply/);

    const created = await cli(["keys", "create", "--tenant", "acme", "--name", "ci"], env);
    expect(created.code).toBe(0);
    const key = /^(cap_[A-Za-z0-9_-]+)$/m.exec(created.out)?.[1];
    expect(key).toBeDefined();
    const listed = await cli(["keys", "list", "--tenant", "acme"], env);
    expect(listed.out).toContain(key!.slice(0, 10));
    expect(listed.out).not.toContain(key!);
    expect(listed.out).toContain("active");
    const revoked = await cli(["keys", "revoke", key!.slice(0, 10)], env);
    expect(revoked.code).toBe(0);
    expect((await cli(["keys", "list"], env)).out).toContain("revoked");

    const missing = await cli(["runs", "get", "00000000-0000-0000-0000-000000000000"], env);
    expect(missing.code).toBe(2);
    expect(missing.out).toMatch(/not found/);
    expect((await cli(["runs", "list", "--limit", "0"], env)).code).toBe(2);
    expect((await cli(["runs", "list"], env)).code).toBe(0);
  });
});
