import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createPgDb, type Db } from "../../src/state/db.js";
import { migrate } from "../../src/state/migrate.js";
import { appendLlmStep } from "../../src/state/journal.js";
import { claimRun, enqueueRun, getRun, resumeRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import { silentLogger } from "../../src/logger.js";
import type { Run } from "../../src/state/types.js";
import { startEffectsServer, type EffectsServer } from "../support/effects-server.js";
import { until } from "../support/pg.js";
import { killAll, spawnCapstan, type Proc } from "../support/procs.js";
import { startPrivatePostgres, type PrivatePostgres } from "../support/private-services.js";

/**
 * Deterministic reproductions of what the chaos suite found, one fault each,
 * at a precise point (real worker processes, a private PostgreSQL that may be
 * restarted without disturbing other test files).
 */

let server: PrivatePostgres;
let db: Db;
let url: string;
let fx: EffectsServer;
let tenantId: string;
const procs: Proc[] = [];

beforeAll(async () => {
  server = await startPrivatePostgres();
  const admin = new pg.Client({ connectionString: server.url() });
  await admin.connect();
  await admin.query("CREATE DATABASE capstan_regressions");
  await admin.end();
  url = server.url("capstan_regressions");
  db = createPgDb({ url, poolSize: 4, logger: silentLogger() });
  await migrate(db, silentLogger());
  fx = await startEffectsServer();
  tenantId = (await ensureTenant(db, "regressions")).id;
});
afterEach(async () => {
  await killAll(procs.splice(0));
});
afterAll(async () => {
  await killAll(procs.splice(0));
  await db?.close();
  await fx?.close();
  await server?.close();
});

function worker(): Proc {
  const p = spawnCapstan(["--config", "test/fixtures/chaos.config.ts", "worker", "--no-migrate"], {
    DATABASE_URL: url,
    EFFECTS_URL: fx.url,
    CAPSTAN_OPS_PORT: "0",
    CAPSTAN_LEASE_MS: "1500",
    CAPSTAN_POLL_MS: "200",
    CAPSTAN_SHUTDOWN_GRACE_MS: "300",
  });
  procs.push(p);
  return p;
}

async function start(tag: string, rounds: string[][]): Promise<Run> {
  const th = await createThread(db, tenantId);
  const { run } = await enqueueRun(db, {
    tenantId,
    threadId: th.id,
    agent: "chaos",
    content: `Please follow this plan: ${JSON.stringify({ tag, rounds })}`,
    maxAttempts: 5,
    defaultMaxPending: 1000,
  });
  return run;
}

const settled = (runId: string, statuses = ["succeeded", "failed", "waiting", "cancelled"]) =>
  until(
    async () => {
      const r = await getRun(db, tenantId, runId);
      return statuses.includes(r.status) ? r : null;
    },
    { timeoutMs: 30_000, what: `run ${runId} to settle` },
  );

describe("chaos regressions", () => {
  it("an approved side effect whose worker dies mid-call is not run again without a new decision", async () => {
    const a = worker();
    const run = await start("approved-side", [["email"]]);
    const waiting = await settled(run.id);
    expect(waiting.wait).toMatchObject({ reason: "approval", tool: "email" });
    const held = fx.hold("side");
    await resumeRun(db, tenantId, run.id, { decision: "approve" });
    await held.arrived; // the email is being sent…
    a.kill("SIGKILL"); // …and the worker dies before it learns the outcome
    await a.exited;
    held.release();
    worker();
    const after = await settled(run.id);
    // docs/architecture.md#tools-and-effects: an intent without outcome of a side-effect tool
    // parks the run for a human;
    // the approval given before the first attempt does not cover a second one.
    expect(fx.performed.get(`${run.id}:1`)).toBe(1);
    expect(after.status).toBe("waiting");
    expect(after.wait).toMatchObject({ reason: "unknown_outcome", step_no: 1, tool: "email" });
  });

  it("a journal write and an enqueue on the same thread do not deadlock", async () => {
    // What the chaos suite saw as `run failed: {"code":"internal","message":"deadlock detected"}`
    // when a client sent a second message while the first run was being journaled.
    const run = await start("deadlock", [["lookup"]]);
    const claimed = await until(() => claimRun(db, { workerId: "regression", leaseMs: 60_000 }), {
      what: "the claim",
    });
    expect(claimed.id).toBe(run.id);
    // Pause the journal write after it locked the run row: an uncommitted row for the same step.
    const blocker = new pg.Client({ connectionString: url });
    blocker.on("error", () => {});
    await blocker.connect();
    try {
      await blocker.query("BEGIN");
      await blocker.query(
        "INSERT INTO steps (run_id, step_no, kind, status, attempt, epoch) VALUES ($1, 0, 'llm', 'started', 0, 0)",
        [run.id],
      );
      const waiting = (like: string) =>
        until(
          async () => {
            const r = await db.query<{ n: number }>(
              "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
              [like],
            );
            return (r.rows[0]?.n ?? 0) > 0;
          },
          { timeoutMs: 10_000, what: `a statement like ${like} to wait` },
        );
      // The worker's write: holds the run row, waits for our step row.
      const journal = appendLlmStep(
        db,
        claimed.lease,
        {
          stepNo: 0,
          response: { text: "x", toolCalls: [] },
          usage: { inputTokens: 3, outputTokens: 4 },
          startedAt: new Date(),
        },
        [{ type: "step.completed", data: { step_no: 0 } }],
      ).then(
        () => "ok",
        (err: unknown) => (err instanceof Error ? err.message : String(err)),
      );
      await waiting("WITH r AS%INSERT INTO steps%");
      // A second message on the thread: locks the thread, waits for the run row.
      const th = await getRun(db, tenantId, run.id);
      const enqueue = enqueueRun(db, {
        tenantId,
        threadId: th.threadId,
        agent: "chaos",
        content: "second message",
        maxAttempts: 5,
        defaultMaxPending: 1000,
      }).then(
        () => "ok",
        (err: unknown) => (err instanceof Error ? err.message : String(err)),
      );
      await waiting("SELECT id FROM runs WHERE thread_id%");
      await blocker.query("ROLLBACK");
      expect(await journal).toBe("ok");
      expect(await enqueue).toBe("ok");
    } finally {
      await blocker.end().catch(() => {});
    }
  });

  it("a PostgreSQL restart during a transaction does not crash the worker", async () => {
    const run = await start("pg-restart", [["lookup"]]);
    // Block the worker inside a transaction: a conflicting uncommitted journal row for step 0.
    const blocker = new pg.Client({ connectionString: url });
    blocker.on("error", () => {});
    await blocker.connect();
    await blocker.query("BEGIN");
    await blocker.query(
      "INSERT INTO steps (run_id, step_no, kind, status, attempt, epoch) VALUES ($1, 0, 'llm', 'started', 0, 0)",
      [run.id],
    );
    const a = worker();
    // The worker is waiting on our row lock inside its transaction (a checked-out pool client).
    await until(
      async () => {
        const r = await db.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name = 'capstan-worker'",
        );
        return (r.rows[0]?.n ?? 0) > 0;
      },
      { timeoutMs: 20_000, what: "the worker to block in its transaction" },
    );
    await server.restart("immediate");
    await blocker.end().catch(() => {});
    // Either the worker dies (an unhandled 'error' event), or it finishes the run.
    const alive = () => a.child.exitCode === null && a.child.signalCode === null;
    await until(
      async () => !alive() || ["succeeded", "failed"].includes((await getRun(db, tenantId, run.id)).status),
      { timeoutMs: 30_000, what: "the worker to die or finish the run" },
    );
    expect(alive(), `the worker died:\n${a.output().slice(-3_000)}`).toBe(true);
    expect((await getRun(db, tenantId, run.id)).status).toBe("succeeded");
  });
});
