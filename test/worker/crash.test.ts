import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createTestDb, until, type TestDb } from "../support/pg.js";
import { startEffectsServer, type EffectsServer } from "../support/effects-server.js";
import { killAll, spawnCapstan, type Proc } from "../support/procs.js";
import { enqueueRun, getRun, resumeRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread, readHistory } from "../../src/state/threads.js";
import { readJournal } from "../../src/state/journal.js";
import { listEvents } from "../../src/state/events.js";
import type { Run } from "../../src/state/types.js";

/**
 * Crash tests with real worker processes against real PostgreSQL: each kills
 * a worker at a precise point (a call held open at the effects server, or a
 * journal write blocked by a row the test holds) and asserts on what reached
 * the database and the outside world.
 */

let t: TestDb;
let fx: EffectsServer;
let tenantId: string;
const procs: Proc[] = [];

beforeAll(async () => {
  t = await createTestDb();
  fx = await startEffectsServer();
  tenantId = (await ensureTenant(t.db, "crash")).id;
});
afterEach(async () => {
  await killAll(procs.splice(0));
});
afterAll(async () => {
  await fx?.close();
  await t?.drop();
});

function worker(env: Record<string, string> = {}): Proc {
  const p = spawnCapstan(["--config", "test/fixtures/crash.config.ts", "worker", "--no-migrate"], {
    DATABASE_URL: t.url,
    EFFECTS_URL: fx.url,
    CAPSTAN_LEASE_MS: "2000",
    CAPSTAN_POLL_MS: "200",
    CAPSTAN_SHUTDOWN_GRACE_MS: "300",
    ...env,
  });
  procs.push(p);
  return p;
}

async function start(text: string): Promise<Run> {
  const th = await createThread(t.db, tenantId);
  const { run } = await enqueueRun(t.db, {
    tenantId,
    threadId: th.id,
    agent: "crash",
    content: text,
    maxAttempts: 5,
    defaultMaxPending: 1000,
  });
  return run;
}

const settled = (runId: string, statuses = ["succeeded", "failed", "waiting", "cancelled"]) =>
  until(
    async () => {
      const r = await getRun(t.db, tenantId, runId);
      return statuses.includes(r.status) ? r : null;
    },
    { timeoutMs: 40_000, what: `run ${runId} to settle` },
  );

async function killAndWait(p: Proc) {
  p.kill("SIGKILL");
  await p.exited;
}

describe("worker crashes (real processes)", () => {
  it("(a) SIGKILL during an LLM call: another worker re-issues only that call", async () => {
    const held = fx.hold("llm");
    const a = worker();
    const run = await start('charge {"amount": 5}');
    await held.arrived;
    await killAndWait(a);
    held.release();
    worker();
    const done = await settled(run.id);
    expect(done.status, a.output()).toBe("succeeded");
    // Two LLM steps in the run, three calls: the killed one was re-issued once.
    const llmCalls = fx.arrivals.filter((x) => x.kind === "llm").length;
    expect(llmCalls).toBe(3);
    expect(fx.performed.get(`${run.id}:1`)).toBe(1);
    const journal = await readJournal(t.db, run.id);
    expect(journal.map((s) => [s.stepNo, s.kind, s.status])).toEqual([
      [0, "llm", "completed"],
      [1, "tool", "completed"],
      [2, "llm", "completed"],
    ]);
    expect(done.attempts).toBe(2);
  });

  it("(b) SIGKILL during an idempotent tool call: re-run with the same key, effect happens once", async () => {
    const held = fx.hold("idem");
    const a = worker();
    const run = await start('charge {"amount": 7}');
    const arrival = await held.arrived;
    expect(arrival.key).toBe(`${run.id}:1`);
    await killAndWait(a);
    held.release();
    worker();
    const done = await settled(run.id);
    expect(done.status).toBe("succeeded");
    expect(fx.requests("idem", `${run.id}:1`)).toBe(2); // re-run…
    expect(fx.performed.get(`${run.id}:1`)).toBe(1); // …with the same key: one effect
    const journal = await readJournal(t.db, run.id);
    expect(journal.filter((s) => s.kind === "llm").length).toBe(2);
    expect(journal[1]).toMatchObject({ status: "completed", idempotencyKey: `${run.id}:1` });
  });

  it("(c) SIGKILL between steps: the journaled LLM step is reused, not re-requested", async () => {
    const run = await start('lookup {"q": "x"}');
    // Hold a conflicting, uncommitted journal row for step 1: the worker
    // journals step 0, then blocks writing step 1's intent: between steps.
    const client = new pg.Client({ connectionString: t.url });
    await client.connect();
    const llmBefore = fx.requests("llm");
    try {
      await client.query("BEGIN");
      await client.query(
        "INSERT INTO steps (run_id, step_no, kind, status, attempt, epoch) VALUES ($1, 1, 'tool', 'started', 0, 0)",
        [run.id],
      );
      const a = worker();
      await until(async () => (await readJournal(t.db, run.id)).some((s) => s.stepNo === 0), {
        what: "step 0 journaled",
      });
      await killAndWait(a);
      await client.query("ROLLBACK");
    } finally {
      await client.end();
    }
    expect(fx.requests("pure")).toBe(0);
    worker();
    const done = await settled(run.id);
    expect(done.status).toBe("succeeded");
    // Step 0 once, then step 2: the journaled response was never requested again.
    expect(fx.requests("llm") - llmBefore).toBe(2);
    expect(fx.requests("pure")).toBe(1);
  });

  it("(d) SIGKILL during a side-effect tool call: the run waits for a human, nothing is repeated", async () => {
    const held = fx.hold("side");
    const a = worker();
    const run = await start('email {"to": "a@example.com"}');
    await held.arrived;
    await killAndWait(a);
    held.release();
    worker();
    const done = await settled(run.id);
    expect(done.status).toBe("waiting");
    expect(done.wait).toMatchObject({ reason: "unknown_outcome", step_no: 1, tool: "email" });
    expect(fx.requests("side", `${run.id}:1`)).toBe(1);
    expect(fx.performed.get(`${run.id}:1`)).toBe(1);
  });

  it("SIGSTOP past the lease, then SIGCONT: the stale worker's writes are rejected, no duplicate step", async () => {
    const held = fx.hold("idem");
    const a = worker({ CAPSTAN_LOG_LEVEL: "info" });
    const run = await start('charge {"amount": 9}');
    await held.arrived;
    a.kill("SIGSTOP");
    const b = worker({ CAPSTAN_LOG_LEVEL: "info" });
    // B reclaims after the lease and finishes; A's held call is still open.
    const done = await settled(run.id).catch((e: unknown) => {
      throw new Error(`${String(e)}\n--- B:\n${b.output().slice(-4000)}`);
    });
    expect(done.status).toBe("succeeded");
    const eventsBefore = await listEvents(t.db, run.id, 0, 1000);
    const historyBefore = await readHistory(t.db, run.threadId);
    a.kill("SIGCONT");
    held.release(); // A gets its tool result now and tries to journal it
    // A got its tool result; wait until it tried its fenced write and gave the run up.
    await until(() => /"outcome":"aborted"/.test(a.output()), { timeoutMs: 15_000, what: "A to give up" });
    const journal = await readJournal(t.db, run.id);
    expect(journal.map((s) => s.stepNo)).toEqual([0, 1, 2]);
    expect(await listEvents(t.db, run.id, 0, 1000)).toEqual(eventsBefore);
    expect(await readHistory(t.db, run.threadId)).toEqual(historyBefore);
    expect(fx.performed.get(`${run.id}:1`)).toBe(1);
  });

  it("SIGSTOP between a side effect's intent and its call: after SIGCONT the stale worker does not perform it", async () => {
    // What the long chaos run found: a worker paused right after committing the
    // intent, its run was reclaimed (unknown outcome → a human approved a
    // re-run), and on waking it performed the effect a second time.
    const run = await start('email {"to": "b@example.com"}');
    const client = new pg.Client({ connectionString: t.url });
    await client.connect();
    const a = worker({ CAPSTAN_LOG_LEVEL: "info" });
    try {
      // A conflicting uncommitted row: A's intent for step 1 blocks in PostgreSQL.
      await client.query("BEGIN");
      await client.query(
        "INSERT INTO steps (run_id, step_no, kind, status, attempt, epoch) VALUES ($1, 1, 'tool', 'started', 0, 0)",
        [run.id],
      );
      await until(
        async () => {
          const r = await t.db.query<{ n: number }>(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO steps%'",
          );
          return (r.rows[0]?.n ?? 0) > 0;
        },
        { what: "A's intent write to wait" },
      );
      a.kill("SIGSTOP");
      await client.query("ROLLBACK"); // A's intent commits now, while A is paused
    } finally {
      await client.end();
    }
    await until(
      async () =>
        (await readJournal(t.db, run.id)).find((s) => s.stepNo === 1)?.status === "started" ? true : null,
      { what: "the intent committed" },
    );
    worker();
    const waiting = await settled(run.id);
    expect(waiting.status).toBe("waiting");
    expect(waiting.wait).toMatchObject({ reason: "unknown_outcome", step_no: 1 });
    expect(fx.requests("side", `${run.id}:1`)).toBe(0); // A never got to call it
    await resumeRun(t.db, tenantId, run.id, { decision: "approve" });
    const done = await settled(run.id, ["succeeded", "failed"]);
    expect(done.status).toBe("succeeded");
    expect(fx.performed.get(`${run.id}:1`)).toBe(1);

    a.kill("SIGCONT"); // A learns its intent committed, long after its lease ran out
    await until(() => /"outcome":"aborted"/.test(a.output()), { timeoutMs: 15_000, what: "A to give up" });
    expect(fx.requests("side", `${run.id}:1`)).toBe(1);
    expect(fx.performed.get(`${run.id}:1`)).toBe(1);
  });

  it("a tool call longer than 3 lease periods is not re-executed by another worker", async () => {
    const held = fx.hold("idem");
    worker();
    worker();
    const run = await start('charge {"amount": 11}');
    await held.arrived;
    const heldSince = Date.now();
    // 3.5 lease periods (lease 2 s) with both workers alive.
    await until(() => Date.now() - heldSince > 7_000, { timeoutMs: 10_000, intervalMs: 200 });
    held.release();
    const done = await settled(run.id);
    expect(done.status).toBe("succeeded");
    expect(done.attempts).toBe(1);
    expect(fx.requests("idem", `${run.id}:1`)).toBe(1);
  });

  it("SIGTERM during a run hands it to another worker without waiting for lease expiry", async () => {
    const env = { CAPSTAN_LEASE_MS: "60000" };
    const held = fx.hold("idem");
    const a = worker(env);
    const run = await start('charge {"amount": 13}');
    await held.arrived;
    worker(env);
    const termAt = Date.now();
    a.kill("SIGTERM");
    expect((await a.exited).code).toBe(0);
    held.release();
    const done = await settled(run.id);
    expect(done.status).toBe("succeeded");
    expect(Date.now() - termAt).toBeLessThan(60_000); // the lease never had to expire
    expect(done.attempts).toBe(1); // a hand-off does not burn an attempt
    expect(fx.performed.get(`${run.id}:1`)).toBe(1);
  });
});
