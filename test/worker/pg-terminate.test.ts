import pg from "pg";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveSettings } from "../../src/config/config.js";
import { createRedisCoordination } from "../../src/coord/redis/index.js";
import type { Coordination } from "../../src/coord/types.js";
import { startIngress, type RunningIngress } from "../../src/ingress/server.js";
import { silentLogger } from "../../src/logger.js";
import { createPgDb, type Db } from "../../src/state/db.js";
import { listEvents } from "../../src/state/events.js";
import { readJournal } from "../../src/state/journal.js";
import { createApiKey, ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import { call, obj } from "../ingress/harness.js";
import { startEffectsServer, type EffectsServer } from "../support/effects-server.js";
import { ADMIN_URL, createTestDb, until, type TestDb } from "../support/pg.js";
import { killAll, spawnCapstan, type Proc } from "../support/procs.js";
import { deleteKeys, randomPrefix, REDIS_URL } from "../support/redis.js";

/**
 * PostgreSQL sessions die under load: every backend of this file's database
 * is terminated every 0.3 s (pg_terminate_backend from a separate admin
 * connection, filtered by datname: other test files share the server), for
 * at least 20 s and until all 200 runs have settled, so every run lives its
 * whole life under it. The runs are created through a real ingress over HTTP
 * (during the first 18 s) and go through three real worker processes at the
 * default settings (lease 30 s). Each run calls a tool once: an idempotent
 * payment or a plain side effect.
 *
 * Nothing may show: every run succeeds on its first attempt (one claim, one
 * `run.started`: nobody waited out a lease), every run's events are gap-free,
 * every effect happened once and every model call was made once, and the
 * API answered only 2xx or 503 (a create retried with its Idempotency-Key).
 */

const RUNS = 200;
const KILL_EVERY_MS = 300;
const KILL_FOR_MS = 20_000;
const LEASE_MS = 30_000; // the default, stated for the report

let t: TestDb;
let apiDb: Db;
let fx: EffectsServer;
let coord: Coordination;
let api: RunningIngress;
let key = "";
let tenantId = "";
const prefix = randomPrefix();
const procs: Proc[] = [];
/** The ingress's warnings and errors, for failure messages. */
const apiLog: string[] = [];
const apiLogger = pino({ level: "warn" }, { write: (line: string) => void apiLog.push(line) });

beforeAll(async () => {
  t = await createTestDb();
  fx = await startEffectsServer();
  const ten = await ensureTenant(t.db, "pg-terminate");
  tenantId = ten.id;
  key = (await createApiKey(t.db, ten.id, "test")).key;
  coord = createRedisCoordination({
    url: REDIS_URL,
    keyPrefix: prefix,
    logger: silentLogger(),
    events: { maxLen: 10_000, ttlMs: 600_000 },
  });
  // The ingress gets a pool of its own, named so the terminations it suffers can be counted.
  apiDb = createPgDb({
    url: t.url,
    poolSize: 10,
    logger: silentLogger(),
    applicationName: "capstan-ingress",
  });
  api = await startIngress({
    host: "127.0.0.1",
    port: 0,
    db: apiDb,
    coord,
    settings: resolveSettings({}),
    logger: apiLogger,
    agentNames: () => ["crash"],
    closeGraceMs: 1_000,
  });
}, 120_000);

afterAll(async () => {
  await killAll(procs.splice(0));
  await api?.close();
  await coord?.close();
  await apiDb?.close();
  await fx?.close();
  await deleteKeys(prefix).catch(() => {});
  await t?.drop();
});

function worker(): Proc {
  const p = spawnCapstan(["--config", "test/fixtures/crash.config.ts", "worker", "--no-migrate"], {
    DATABASE_URL: t.url,
    EFFECTS_URL: fx.url,
    REDIS_URL,
    CAPSTAN_REDIS_PREFIX: prefix,
    CAPSTAN_LOG_LEVEL: "info",
  });
  procs.push(p);
  return p;
}

interface Killer {
  stop(): Promise<{ total: number; byApp: Map<string, number>; rounds: number }>;
}

/** Terminate every backend of the test database (but the admin's own) every KILL_EVERY_MS. */
async function startKiller(): Promise<Killer> {
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  let stopping = false;
  let total = 0;
  let rounds = 0;
  const byApp = new Map<string, number>();
  const loop = (async () => {
    while (!stopping) {
      const r = await admin.query<{ app: string; ok: boolean }>(
        `SELECT application_name AS app, pg_terminate_backend(pid) AS ok
         FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`,
        [t.name],
      );
      rounds++;
      for (const row of r.rows) {
        if (!row.ok) continue;
        total++;
        byApp.set(row.app, (byApp.get(row.app) ?? 0) + 1);
      }
      // The pace of the chaos, not a synchronisation.
      await new Promise((res) => setTimeout(res, KILL_EVERY_MS));
    }
  })();
  return {
    async stop() {
      stopping = true;
      await loop;
      await admin.end();
      return { total, byApp, rounds };
    },
  };
}

describe("PostgreSQL backends terminated every 0.3 s for 20 s under 200 runs", () => {
  it("no run fails or waits out a lease; events gap-free; every effect and model call once", async () => {
    const t0 = Date.now();
    const workers = [worker(), worker(), worker()];
    await until(() => workers.every((w) => /"msg":"worker started"/.test(w.output())), {
      timeoutMs: 90_000,
      what: "three workers to start",
    });
    const threads = await Promise.all(Array.from({ length: RUNS }, () => createThread(t.db, tenantId)));
    const statuses = new Map<number, number>();
    const seen = (status: number) => statuses.set(status, (statuses.get(status) ?? 0) + 1);

    /** A request answered 503 is retried as a client would, the create with the same key. */
    const retried = async (method: string, path: string, json?: unknown, idem?: string) => {
      for (let i = 0; ; i++) {
        const res = await call(api.url, method, path, {
          key,
          ...(json !== undefined ? { json } : {}),
          ...(idem ? { headers: { "idempotency-key": idem } } : {}),
        });
        seen(res.status);
        if (res.status !== 503 || i >= 100) return res;
        await new Promise((r) => setTimeout(r, 50)); // a client's retry delay
      }
    };

    const startupMs = Date.now() - t0;
    type Row = { id: string; status: string; attempts: number; last_event_id: number; ms: number };
    const readRuns = async () =>
      (
        await t.db.query<Row>(
          `SELECT id, status, attempts, last_event_id,
                  extract(epoch FROM finished_at - started_at) * 1000 AS ms
           FROM runs WHERE tenant_id = $1`,
          [tenantId],
        )
      ).rows;
    const allSettled = (rows: Row[]) =>
      rows.length === RUNS && rows.every((x) => ["succeeded", "failed", "waiting"].includes(x.status));

    // The killing lasts at least KILL_FOR_MS and until every run has settled: every run
    // lives its whole life under it.
    const killer = await startKiller();
    const started = Date.now();
    let killed: Awaited<ReturnType<Killer["stop"]>>;
    const runIds: string[] = [];
    try {
      // Creates spread over the minimum kill period, each retried on 503 with its key.
      await Promise.all(
        threads.map(async (th, i) => {
          await new Promise((r) => setTimeout(r, (i * KILL_FOR_MS * 0.9) / RUNS));
          const input = i % 2 === 0 ? `charge {"amount": ${i}}` : `email {"to": "u${i}@example.com"}`;
          const res = await retried(
            "POST",
            `/v1/threads/${th.id}/runs`,
            { agent: "crash", input },
            `run-${i}`,
          );
          expect(res.status, `${res.text}\n${apiLog.slice(-5).join("")}`).toBe(202);
          const id = obj(res.body).id as string;
          const read = await retried("GET", `/v1/runs/${id}`);
          expect(read.status, `${read.text}\n${apiLog.slice(-5).join("")}`).toBe(200);
          runIds[i] = id;
        }),
      );
      await until(
        async () =>
          Date.now() - started >= KILL_FOR_MS &&
          // The test's own reads are killed too: a lost one is simply asked again.
          allSettled(await readRuns().catch(() => [])),
        { timeoutMs: 240_000, intervalMs: 250, what: "every run to settle under the killing" },
      );
    } finally {
      killed = await killer.stop();
    }
    const killMs = Date.now() - started;
    const final = await readRuns();

    const out = workers.map((w) => w.output()).join("\n");
    const maxMs = Math.max(...final.map((r) => Number(r.ms)));
    console.log(
      `pg-terminate: ${killed.total} backends terminated in ${killed.rounds} rounds ` +
        `(${[...killed.byApp].map(([a, n]) => `${a}: ${n}`).join(", ")}); HTTP ` +
        `${[...statuses].map(([s, n]) => `${s}×${n}`).join(", ")}; longest run ${Math.round(maxMs)} ms ` +
        `(lease ${LEASE_MS} ms); workers up in ${startupMs} ms; killing lasted ${killMs} ms`,
    );

    // The chaos reached both sides.
    expect(killed.byApp.get("capstan-worker") ?? 0).toBeGreaterThan(20);
    expect(killed.byApp.get("capstan-ingress") ?? 0).toBeGreaterThan(5);

    // The API: only success or 503 (Retry-After), never a 500; one run per key.
    expect([...statuses.keys()].sort()).toEqual(expect.arrayContaining([200, 202]));
    for (const s of statuses.keys()) expect([200, 202, 503]).toContain(s);
    expect(new Set(runIds).size).toBe(RUNS);
    expect(final.map((r) => r.id).sort()).toEqual([...runIds].sort());

    // Every run succeeded on its one and only claim.
    expect(
      final.filter((r) => r.status !== "succeeded"),
      out.slice(-5_000),
    ).toEqual([]);
    expect(final.filter((r) => r.attempts !== 1)).toEqual([]);

    for (const r of final) {
      const events = await listEvents(t.db, r.id, 0, 1_000);
      // Gap-free and ending at the run's counter.
      expect(events.map((e) => e.id)).toEqual(Array.from({ length: r.last_event_id }, (_, i) => i + 1));
      // One claim: no second worker (or second try) started it.
      expect(events.filter((e) => e.type === "run.started")).toHaveLength(1);
      expect(events.filter((e) => e.type === "tool.started")).toHaveLength(1);
      const journal = await readJournal(t.db, r.id);
      expect(journal.map((s) => [s.stepNo, s.kind, s.status])).toEqual([
        [0, "llm", "completed"],
        [1, "tool", "completed"],
        [2, "llm", "completed"],
      ]);
      // The tool's effect: requested once, performed once.
      const kind = journal[1]!.toolName === "charge" ? "idem" : "side";
      expect(fx.requests(kind, `${r.id}:1`)).toBe(1);
      expect(fx.performed.get(`${r.id}:1`)).toBe(1);
    }
    // Two model calls per run: no journaled response was requested again.
    expect(fx.requests("llm")).toBe(2 * RUNS);

    // The workers never failed or gave up a run, and are all still up.
    expect(out).not.toMatch(/"msg":"run failed/);
    expect(out).not.toMatch(/"msg":"run interrupted by a database outage/);
    for (const w of workers) expect(w.child.exitCode).toBeNull();
  }, 400_000);
});
