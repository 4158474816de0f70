import pg from "pg";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/logger.js";
import { createPgDb, type Db } from "../../src/state/db.js";
import { DbConnectionError } from "../../src/state/pg-errors.js";
import { ADMIN_URL, createTestDb, until, type TestDb } from "../support/pg.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";

/**
 * The Db against real connection loss: backends of this file's database
 * terminated by pg_terminate_backend from a separate admin connection (only
 * this database's), and a TCP proxy that holds the server's replies or cuts
 * every connection. What must hold: a statement that certainly did not run
 * is retried on a fresh connection; one that may have run is re-run only if
 * it cannot write; a transaction that lost its connection before COMMIT is
 * retried whole; a lost COMMIT is reported as such, never retried.
 */

let t: TestDb;
let admin: pg.Client;
let proxy: TcpProxy;
let viaProxy: Db;

beforeAll(async () => {
  t = await createTestDb({ migrate: false });
  admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  const pgUrl = new URL(t.url);
  proxy = await startTcpProxy({ targetHost: pgUrl.hostname, targetPort: Number(pgUrl.port || 5432) });
  pgUrl.host = `127.0.0.1:${proxy.port}`;
  viaProxy = createPgDb({ url: pgUrl.toString(), poolSize: 2, logger: silentLogger() });
  await t.db.query("CREATE TABLE t (x int)");
});
afterAll(async () => {
  await viaProxy?.close();
  await proxy?.close();
  await admin?.end();
  await t?.drop();
});
beforeEach(async () => {
  await t.db.query("TRUNCATE t");
});

/** Backends of this database (other than the admin's) running a statement matching `like`. */
async function backends(like: string): Promise<number[]> {
  const r = await admin.query<{ pid: number }>(
    `SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND query LIKE $2
       AND state = 'active'`,
    [t.name, like],
  );
  return r.rows.map((x) => x.pid);
}

async function terminateWhenRunning(like: string): Promise<number> {
  const [pid] = await until(
    async () => {
      const p = await backends(like);
      return p.length ? p : null;
    },
    { what: `a backend running ${like}` },
  );
  await admin.query("SELECT pg_terminate_backend($1)", [pid]);
  return pid!;
}

const rows = async () => (await t.db.query<{ x: number }>("SELECT x FROM t ORDER BY x")).rows.map((r) => r.x);

describe("Db under connection loss", () => {
  it("a read whose backend is terminated mid-statement is answered from a fresh connection", async () => {
    const answer = t.db.query<{ pid: number; answer: number }>(
      "SELECT pg_backend_pid() AS pid, 42 AS answer FROM pg_sleep(0.5)",
    );
    const killed = await terminateWhenRunning("%pg_sleep(0.5)%");
    const r = await answer;
    expect(r.rows.map((x) => x.answer)).toEqual([42]);
    expect(r.rows[0]!.pid).not.toBe(killed);
  });

  it("a write whose backend is terminated mid-statement is not re-run: the error says its outcome is unknown", async () => {
    const write = t.db.query("INSERT INTO t SELECT 1 FROM pg_sleep(0.5)").then(
      () => null,
      (err: unknown) => err,
    );
    await terminateWhenRunning("%INSERT INTO t SELECT 1%");
    const err = await write;
    expect(err).toBeInstanceOf(DbConnectionError);
    expect(err).toMatchObject({ code: "database_unavailable", outcome: "unknown" });
    expect(await rows()).toEqual([]); // rolled back by the termination, and never sent again
  });

  it("a transaction whose connection died between statements is retried whole", async () => {
    // The failure of the issue: the session ends while the transaction is between
    // statements; the client emits 'error' and the next statement fails with pg's
    // code-less "Client has encountered a connection error and is not queryable".
    let calls = 0;
    const out = await t.db.tx(async (q) => {
      calls++;
      const { rows: me } = await q.query<{ pid: number }>("SELECT pg_backend_pid() AS pid");
      await q.query("INSERT INTO t VALUES ($1)", [calls]);
      if (calls === 1) {
        await admin.query("SELECT pg_terminate_backend($1)", [me[0]!.pid]);
        await until(
          async () => {
            const r = await admin.query("SELECT 1 FROM pg_stat_activity WHERE pid = $1", [me[0]!.pid]);
            return r.rows.length === 0;
          },
          { what: "the backend to be gone" },
        );
      }
      await q.query("INSERT INTO t VALUES ($1)", [calls * 10]);
      return calls;
    });
    expect(out).toBe(2);
    expect(await rows()).toEqual([2, 20]); // the first try left nothing behind
  });

  it("a COMMIT whose answer is lost is reported with outcome unknown and not retried", async () => {
    let calls = 0;
    const tx = viaProxy
      .tx(async (q) => {
        calls++;
        await q.query("INSERT INTO t VALUES (7)");
        // COMMIT goes out next; its answer will not come back.
        proxy.holdReplies();
      })
      .then(
        () => null,
        (err: unknown) => err,
      );
    await until(async () => ((await rows()).includes(7) ? true : null), { what: "the commit" });
    await proxy.stop();
    await proxy.start();
    const err = await tx;
    expect(err).toBeInstanceOf(DbConnectionError);
    expect(err).toMatchObject({ outcome: "unknown" });
    expect(calls).toBe(1);
    expect(await rows()).toEqual([7]);
  });

  it("a statement whose answer is lost: a read is re-run, a write is reported unknown", async () => {
    const read = viaProxy.query<{ n: number }>("SELECT count(*)::int AS n FROM t WHERE x = 0");
    proxy.holdReplies();
    // The read cannot have finished (its answer is held); cut every connection.
    await until(async () => ((await backends("%WHERE x = 0%")).length === 0 ? true : null), {
      what: "the read to have run",
    });
    await proxy.stop();
    await proxy.start();
    expect((await read).rows).toEqual([{ n: 0 }]);

    const write = viaProxy.query("INSERT INTO t VALUES (8)").then(
      () => null,
      (err: unknown) => err,
    );
    proxy.holdReplies();
    await until(async () => ((await rows()).includes(8) ? true : null), { what: "the insert" });
    await proxy.stop();
    await proxy.start();
    expect(await write).toMatchObject({ outcome: "unknown" });
    expect(await rows()).toEqual([8]); // ran once; the READ ONLY re-run refused to write it again
  });

  it("a server that cannot be reached: DbConnectionError with outcome not_applied", async () => {
    // A fresh pool: an idle connection of the others might be used before its end is noticed.
    const u = new URL(t.url);
    u.host = `127.0.0.1:${proxy.port}`;
    const fresh = createPgDb({ url: u.toString(), poolSize: 1, logger: silentLogger() });
    await proxy.stop();
    try {
      const err = await fresh.query("SELECT 1").then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(DbConnectionError);
      expect(err).toMatchObject({ code: "database_unavailable", outcome: "not_applied" });
    } finally {
      await proxy.start();
    }
    expect((await fresh.query<{ one: number }>("SELECT 1 AS one")).rows).toEqual([{ one: 1 }]);
    await fresh.close();
  });
});
