import pg from "pg";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMemoryCoordination } from "../../src/coord/memory.js";
import { createClaimer } from "../../src/state/claimer.js";
import { createPgDb, type Db } from "../../src/state/db.js";
import { listEvents } from "../../src/state/events.js";
import { readJournal } from "../../src/state/journal.js";
import { claimRun, enqueueRun, getRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import type { ClaimedRun, RunEvent } from "../../src/state/types.js";
import { RunPublisher } from "../../src/worker/publisher.js";
import {
  writeFinish,
  writeLlmStep,
  writeRunStarted,
  writeToolIntent,
  writeToolOutcome,
} from "../../src/worker/run-writes.js";
import { ADMIN_URL, createTestDb, until, type TestDb } from "../support/pg.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";

/**
 * Exactly-once journal writes when a connection dies after the write was
 * sent. A TCP proxy between the worker's Db and PostgreSQL holds the server's
 * reply back, so the write really commits while the worker never hears of
 * it; then the proxy cuts every connection. Each write must be answered from
 * what it committed: no second row, no second event, no journal conflict or
 * lost lease, no event-id gap.
 */

let t: TestDb;
let admin: pg.Client;
let proxy: TcpProxy;
let db: Db;
let tenantId: string;
const logLines: Array<Record<string, unknown>> = [];
const logger = pino(
  { level: "debug" },
  { write: (s: string) => void logLines.push(JSON.parse(s) as Record<string, unknown>) },
);

beforeAll(async () => {
  t = await createTestDb();
  admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  const u = new URL(t.url);
  proxy = await startTcpProxy({ targetHost: u.hostname, targetPort: Number(u.port || 5432) });
  u.host = `127.0.0.1:${proxy.port}`;
  db = createPgDb({ url: u.toString(), poolSize: 2, logger });
  tenantId = (await ensureTenant(t.db, "commit-unknown")).id;
});
afterAll(async () => {
  await db?.close();
  await proxy?.close();
  await admin?.end();
  await t?.drop();
});

async function claimed(workerId = "w-test"): Promise<ClaimedRun> {
  const th = await createThread(t.db, tenantId);
  await enqueueRun(t.db, {
    tenantId,
    threadId: th.id,
    agent: "a",
    content: "hi",
    maxAttempts: 3,
    defaultMaxPending: 1000,
  });
  const run = await claimRun(t.db, { workerId, leaseMs: 60_000 });
  if (!run) throw new Error("nothing to claim");
  return run;
}

function scope(run: ClaimedRun) {
  const stream = createMemoryCoordination({ events: { maxLen: 1000, ttlMs: 60_000 } }).events;
  return {
    db,
    run,
    publisher: new RunPublisher(stream, run.id, run.lastEventId, logger),
    signal: new AbortController().signal,
    logger,
  };
}

/** Send a write, let it commit with its reply held back, then cut every connection. */
async function loseTheReply<T>(
  write: () => Promise<T>,
  committed: () => Promise<boolean>,
  opts: { tx?: boolean } = {},
): Promise<T> {
  await db.query("SELECT 1"); // an open connection: a new one would wait for its handshake's replies
  // A transaction needs the replies up to its COMMIT; a single statement commits on its own.
  proxy.holdReplies(opts.tx ? { afterClientSends: "COMMIT" } : {});
  const pending = write();
  await until(async () => ((await committed()) ? true : null), { what: "the write to commit" });
  await proxy.stop();
  await proxy.start();
  return pending;
}

async function eventsOf(runId: string): Promise<RunEvent[]> {
  return listEvents(t.db, runId, 0, 1000);
}

/** Ids 1..last_event_id, each once: no gap, no duplicate. */
async function expectGapFree(runId: string): Promise<RunEvent[]> {
  const events = await eventsOf(runId);
  const run = await getRun(t.db, tenantId, runId);
  expect(events.map((e) => e.id)).toEqual(Array.from({ length: run.lastEventId }, (_, i) => i + 1));
  return events;
}

const llmStep = (stepNo: number) => ({
  stepNo,
  model: "test:m",
  response: { text: "ok", toolCalls: [], finishReason: "stop" },
  usage: { inputTokens: 3, outputTokens: 1 },
  startedAt: new Date(),
});
const llmEvents = (runId: string, stepNo: number) => [
  { type: "message.completed", data: { run_id: runId, step_no: stepNo, content: "ok" } },
  { type: "step.completed", data: { run_id: runId, step_no: stepNo, kind: "llm" } },
];
const stepRows = async (runId: string) => (await readJournal(t.db, runId)).map((s) => [s.stepNo, s.status]);

describe("a write whose reply was lost after it committed", () => {
  it("run.started: one event, answered from the database", async () => {
    const run = await claimed();
    const s = scope(run);
    const events = await loseTheReply(
      () => writeRunStarted(s, [{ type: "run.started", data: { run_id: run.id, attempt: run.attempts } }]),
      async () => (await eventsOf(run.id)).length > 0,
    );
    expect(events.map((e) => e.type)).toEqual(["run.started"]);
    expect((await expectGapFree(run.id)).map((e) => e.type)).toEqual(["run.started"]);
  });

  it("an LLM step: no journal conflict, one row, its events once", async () => {
    const run = await claimed();
    const s = scope(run);
    const events = await loseTheReply(
      () => writeLlmStep(s, llmStep(0), llmEvents(run.id, 0)),
      async () => (await readJournal(t.db, run.id)).length > 0,
    );
    expect(events.map((e) => e.type)).toEqual(["message.completed", "step.completed"]);
    expect(await stepRows(run.id)).toEqual([[0, "completed"]]);
    expect((await expectGapFree(run.id)).map((e) => e.type)).toEqual(["message.completed", "step.completed"]);
    expect(logLines.some((l) => l.msg === "a write whose connection was lost had committed")).toBe(true);
  });

  it("a tool intent and its outcome: one tool.started, no journal conflict", async () => {
    const run = await claimed();
    const s = scope(run);
    await s.publisher.coarse(await writeLlmStep(s, llmStep(0), llmEvents(run.id, 0)));
    const intent = {
      stepNo: 1,
      toolName: "charge",
      toolCallId: "c1",
      effect: "idempotent" as const,
      idempotencyKey: `${run.id}:1`,
      args: { amount: 1 },
    };
    await s.publisher.coarse(
      await loseTheReply(
        () => writeToolIntent(s, intent, [{ type: "tool.started", data: { run_id: run.id, step_no: 1 } }]),
        async () => (await readJournal(t.db, run.id)).length > 1,
      ),
    );
    const outcome = await loseTheReply(
      () =>
        writeToolOutcome(s, { stepNo: 1, status: "completed", result: { ok: true } }, [
          { type: "step.completed", data: { run_id: run.id, step_no: 1, kind: "tool" } },
        ]),
      async () => (await readJournal(t.db, run.id)).some((x) => x.stepNo === 1 && x.status === "completed"),
    );
    expect(outcome.map((e) => e.type)).toEqual(["step.completed"]);
    expect(await stepRows(run.id)).toEqual([
      [0, "completed"],
      [1, "completed"],
    ]);
    const types = (await expectGapFree(run.id)).map((e) => e.type);
    expect(types.filter((x) => x === "tool.started")).toHaveLength(1);
  });

  it("finishing: the run.succeeded event is returned, not a lost lease", async () => {
    const run = await claimed();
    const s = scope(run);
    const events = await loseTheReply(
      () => writeFinish(s, { status: "succeeded", messages: [{ role: "assistant", content: "ok" }] }),
      async () => (await getRun(t.db, tenantId, run.id)).status === "succeeded",
      { tx: true },
    );
    expect(events.map((e) => e.type)).toContain("run.succeeded");
    expect((await expectGapFree(run.id)).filter((e) => e.type === "run.succeeded")).toHaveLength(1);
  });

  it("a write still running when its connection was cut is waited for before deciding", async () => {
    // A network cut leaves the old backend alive: here it is blocked behind a row the test
    // holds, so it commits only after the worker has lost its connection and asked again.
    const run = await claimed();
    const s = scope(run);
    const blocker = new pg.Client({ connectionString: t.url });
    blocker.on("error", () => {}); // a failed test's cleanup drops the database under it
    await blocker.connect();
    try {
      await blocker.query("BEGIN");
      await blocker.query(
        "INSERT INTO steps (run_id, step_no, kind, status, attempt, epoch) VALUES ($1, 0, 'llm', 'completed', 0, 0)",
        [run.id],
      );
      const write = writeLlmStep(s, llmStep(0), llmEvents(run.id, 0));
      const waiting = (n: number) =>
        until(
          async () => {
            const r = await admin.query(
              "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
              [t.name],
            );
            return (r.rows[0] as { n: number }).n >= n ? true : null;
          },
          { what: `${n} backends waiting on a lock` },
        );
      await waiting(1); // the write, behind the test's row
      await proxy.stop();
      await proxy.start();
      await waiting(2); // and the worker's question, behind the write's run-row lock
      await blocker.query("ROLLBACK"); // the old write goes through and commits
      const events = await write;
      expect(events.map((e) => e.type)).toEqual(["message.completed", "step.completed"]);
      expect(await stepRows(run.id)).toEqual([[0, "completed"]]);
      await expectGapFree(run.id);
    } finally {
      await blocker.end();
    }
  });
});

describe("a claim whose reply was lost", () => {
  it("is handed back at once and claimed again, without costing an attempt", async () => {
    const th = await createThread(t.db, tenantId);
    const { run } = await enqueueRun(t.db, {
      tenantId,
      threadId: th.id,
      agent: "a",
      content: "hi",
      maxAttempts: 3,
      defaultMaxPending: 1000,
    });
    // Hold the tenant row: the claim statement locks the run, then waits to stamp the tenant.
    const blocker = new pg.Client({ connectionString: t.url });
    blocker.on("error", () => {}); // a failed test's cleanup drops the database under it
    await blocker.connect();
    const got: ClaimedRun[] = [];
    const claimer = createClaimer({
      db,
      workerId: "w-claimer",
      leaseMs: 60_000,
      pollMs: 60_000,
      capacity: () => 1 - got.length,
      onClaim: (r) => got.push(r),
      held: () => got.map((r) => r.id),
      logger,
    });
    try {
      await blocker.query("BEGIN");
      await blocker.query("SELECT 1 FROM tenants WHERE id = $1 FOR UPDATE", [tenantId]);
      await claimer.start();
      await until(
        async () => {
          const r = await admin.query(
            "SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock' AND query LIKE '%last_claimed_at%'",
            [t.name],
          );
          return r.rows.length ? true : null;
        },
        { what: "the claim to wait on the tenant row" },
      );
      proxy.holdReplies();
      await blocker.query("COMMIT");
      await until(async () => ((await getRun(t.db, tenantId, run.id)).status === "running" ? true : null), {
        what: "the claim to commit",
      });
      await proxy.stop();
      await proxy.start();
      await until(() => (got.length ? true : null), { what: "the run to be claimed again" });
    } finally {
      await claimer.stop();
      await blocker.end();
    }
    expect(got.map((r) => r.id)).toEqual([run.id]);
    const now = await getRun(t.db, tenantId, run.id);
    expect(now).toMatchObject({ status: "running", leaseOwner: "w-claimer", attempts: 1 });
    // Claimed (1), handed back (2), claimed again (3): the lost claim's epoch is fenced.
    expect(got[0]!.lease.epoch).toBe(3);
    expect(logLines.some((l) => l.msg === "handed back runs claimed by a lost answer")).toBe(true);
  });
});
