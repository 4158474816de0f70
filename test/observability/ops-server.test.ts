import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../src/logger.js";
import { createMetrics } from "../../src/observability/metrics.js";
import { readinessChecks, startOpsServer, type OpsServer } from "../../src/observability/ops-server.js";
import { createPgDb, type Db } from "../../src/state/db.js";
import { loadMigrations } from "../../src/state/migrate.js";
import { createTestDb, until, type TestDb } from "../support/pg.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";
import { parseProm, value } from "./prom-text.js";

/**
 * The worker's ops endpoints. Postgres "goes down" by closing a TCP proxy in
 * front of the shared server (never the server itself) and "comes back" by
 * reopening it on the same port: /readyz must follow without a restart.
 */

let t: TestDb;
let proxy: TcpProxy;
let db: Db;
let ops: OpsServer | undefined;

beforeAll(async () => {
  t = await createTestDb();
  const target = new URL(t.url);
  proxy = await startTcpProxy({ targetHost: target.hostname, targetPort: Number(target.port || 5432) });
  const via = new URL(t.url);
  via.hostname = "127.0.0.1";
  via.port = String(proxy.port);
  db = createPgDb({ url: via.toString(), poolSize: 2, logger: silentLogger() });
});
afterAll(async () => {
  await ops?.close();
  await db?.close();
  await proxy?.close();
  await t?.drop();
});

async function get(
  path: string,
  init?: RequestInit,
): Promise<{ status: number; body: string; type: string | null }> {
  const r = await fetch(ops!.url + path, { ...init, signal: AbortSignal.timeout(10_000) });
  return { status: r.status, body: await r.text(), type: r.headers.get("content-type") };
}

interface ReadyBody {
  status: string;
  checks: Record<string, { ok: boolean; detail?: string }>;
}
const ready = async () => {
  const r = await get("/readyz");
  const body = JSON.parse(r.body) as ReadyBody;
  return { status: r.status, state: body.status, checks: body.checks };
};

describe("ops server", () => {
  it("serves /healthz, /metrics and /readyz, and /readyz follows Postgres down and back", async () => {
    let warm = false;
    let coordUp = true;
    const metrics = createMetrics({ defaultLabels: { role: "worker" } });
    metrics.trackDbPool(() => db.stats());
    metrics.trackQueue(db, { ttlMs: 0, timeoutMs: 1_000 });
    ops = await startOpsServer({
      host: "127.0.0.1",
      port: 0,
      metrics,
      readiness: readinessChecks({
        db,
        coord: { kind: "redis", ping: async () => coordUp },
        warm: () => warm,
        agents: () => 1,
        timeoutMs: 1_000,
      }),
    });

    const health = await get("/healthz");
    expect(health.status).toBe(200);
    expect(JSON.parse(health.body)).toEqual({ status: "ok" });

    // Not warm yet: everything else is fine, so only `warm` fails.
    let r = await ready();
    expect(r.status).toBe(503);
    expect(r.state).toBe("not_ready");
    expect(r.checks).toEqual({
      postgres: { ok: true },
      schema: { ok: true },
      coordination: { ok: true },
      warm: { ok: false, detail: "starting: not warm yet" },
      agents: { ok: true },
    });
    warm = true;
    r = await ready();
    expect(r).toMatchObject({
      status: 200,
      state: "ready",
      checks: { postgres: { ok: true }, schema: { ok: true }, warm: { ok: true } },
    });

    const m = await get("/metrics");
    expect(m.status).toBe(200);
    expect(m.type).toMatch(/^text\/plain/);
    expect(value(parseProm(m.body), "capstan_queue_stats_up", { role: "worker" })).toBe(1);

    // Postgres goes away.
    await proxy.stop();
    r = await until(
      async () => {
        const x = await ready();
        return x.status === 503 ? x : null;
      },
      { what: "/readyz to turn 503 while Postgres is down" },
    );
    expect(r.checks.postgres?.ok).toBe(false);
    expect(r.checks.postgres?.detail).toMatch(/^unreachable/);
    expect(r.checks.warm).toEqual({ ok: true });
    // Liveness does not depend on Postgres; metrics still answer, and say the queue read failed.
    expect((await get("/healthz")).status).toBe(200);
    const down = await get("/metrics");
    expect(down.status).toBe(200);
    expect(value(parseProm(down.body), "capstan_queue_stats_up", { role: "worker" })).toBe(0);

    // Postgres comes back: ready again, same process, same pool.
    await proxy.start();
    r = await until(
      async () => {
        const x = await ready();
        return x.status === 200 ? x : null;
      },
      { what: "/readyz to turn 200 once Postgres is back" },
    );
    expect(r.checks).toMatchObject({ postgres: { ok: true }, schema: { ok: true } });

    // Coordination down is not ready either.
    coordUp = false;
    r = await ready();
    expect(r.status).toBe(503);
    expect(r.checks.coordination).toEqual({ ok: false, detail: "redis coordination unreachable" });
    coordUp = true;
    expect((await ready()).status).toBe(200);
  });

  it("is unready while the database is behind this build, ready when it is ahead", async () => {
    const shipped = await loadMigrations();
    const newer = [...shipped, { version: shipped.length + 1, name: "9999_future", sql: "" }];
    const behind = await readinessChecks({ db: t.db, migrations: newer })();
    expect(behind.ok).toBe(false);
    expect(behind.checks.schema?.ok).toBe(false);
    expect(behind.checks.schema?.detail).toMatch(/needs \d+: run `capstan migrate`/);
    // A newer release already migrated the database (rolling upgrade): old replicas stay in service.
    const ahead = await readinessChecks({ db: t.db, migrations: shipped.slice(0, -1) })();
    expect(ahead).toEqual({ ok: true, checks: { postgres: { ok: true }, schema: { ok: true } } });
  });

  it("answers in bounded time, single-flights probes, and refuses what it does not serve", async () => {
    let calls = 0;
    const server = await startOpsServer({
      host: "127.0.0.1",
      port: 0,
      metrics: createMetrics({ defaultMetrics: false }),
      readiness: () => {
        calls++;
        return new Promise(() => {}); // a check that hangs forever
      },
      readinessTimeoutMs: 200,
    });
    try {
      // The check never settles: only the timeout can answer, and the answer says so.
      const [a, b] = await Promise.all([fetch(server.url + "/readyz"), fetch(server.url + "/readyz")]);
      expect([a.status, b.status]).toEqual([503, 503]);
      expect(await a.json()).toEqual({
        status: "not_ready",
        checks: { readiness: { ok: false, detail: "checks did not finish within 200 ms" } },
      });
      await b.text();
      expect(calls).toBe(1);

      expect((await fetch(server.url + "/nope")).status).toBe(404);
      const post = await fetch(server.url + "/healthz", { method: "POST" });
      expect(post.status).toBe(405);
      expect(post.headers.get("allow")).toBe("GET, HEAD");
      const head = await fetch(server.url + "/healthz", { method: "HEAD" });
      expect(head.status).toBe(200);
      expect(await head.text()).toBe("");
    } finally {
      await server.close();
    }
  });

  it("fails to start with a clear message when the port is taken", async () => {
    const first = await startOpsServer({
      host: "127.0.0.1",
      port: 0,
      metrics: createMetrics({ defaultMetrics: false }),
      readiness: async () => ({ ok: true, checks: {} }),
    });
    try {
      await expect(
        startOpsServer({
          host: "127.0.0.1",
          port: first.port,
          metrics: createMetrics({ defaultMetrics: false }),
          readiness: async () => ({ ok: true, checks: {} }),
        }),
      ).rejects.toThrow(
        expect.objectContaining({
          name: "PortInUseError",
          port: first.port,
          message: `ops server: cannot listen on 127.0.0.1:${first.port}: the port is in use`,
        }),
      );
    } finally {
      await first.close();
    }
  });
});
