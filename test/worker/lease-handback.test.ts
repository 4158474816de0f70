import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { defineAgent, tool } from "../../src/agent/define.js";
import { resolveModel, toolSchemas } from "../../src/agent/models.js";
import { createScriptedModel } from "../../src/agent/scripted.js";
import { resolveSettings } from "../../src/config/config.js";
import { createMemoryCoordination } from "../../src/coord/index.js";
import type { Coordination } from "../../src/coord/types.js";
import { silentLogger } from "../../src/logger.js";
import { enqueueRun, getRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import type { LoadedAgent } from "../../src/worker/run-loop.js";
import { createWorker, type Worker } from "../../src/worker/worker.js";
import { createTestDb, until, type TestDb } from "../support/pg.js";

/**
 * A worker that cannot confirm its lease in time (here: its heartbeat blocked
 * by a lock the test holds, as a slow database would) aborts the run locally,
 * then hands it back at once instead of leaving it to lease expiry: the run
 * is claimed again without a lease period's wait and without the attempt
 * counting against it.
 */

let t: TestDb;
let coord: Coordination;
let worker: Worker | undefined;

beforeAll(async () => {
  t = await createTestDb();
  coord = createMemoryCoordination({ events: { maxLen: 10_000, ttlMs: 3_600_000 } });
});
afterAll(async () => {
  await worker?.stop({ graceMs: 500 });
  await coord?.close();
  await t?.drop();
});

describe("a lease the worker could not confirm", () => {
  it("is handed back: the run is claimed again at once and the attempt is not charged", async () => {
    const calls: { key: string; signal: AbortSignal }[] = [];
    let finish: (() => void) | undefined;
    const charge = tool({
      description: "Charge a card",
      input: z.object({}),
      effect: "idempotent",
      run: async (_args, ctx) => {
        calls.push({ key: ctx.idempotencyKey, signal: ctx.signal });
        if (calls.length === 1) {
          // The first call hangs until the worker aborts it.
          await new Promise((_, reject) =>
            ctx.signal.addEventListener("abort", () => reject(new Error("aborted")), { once: true }),
          );
        }
        await new Promise<void>((r) => (finish = r));
        return { ok: true };
      },
    });
    const def = defineAgent({
      name: "handback",
      model: createScriptedModel(({ step }) =>
        step === 0 ? { toolCalls: [{ toolName: "charge", input: {} }] } : { text: "charged" },
      ),
      instructions: "Charge.",
      tools: { charge },
    });
    const agents = new Map<string, LoadedAgent>([
      [def.name, { def, model: resolveModel(def.model, {}), tools: toolSchemas(def) }],
    ]);
    const settings = resolveSettings({ flags: { worker: { leaseMs: 1_000, pollMs: 100, concurrency: 1 } } });
    worker = createWorker({ db: t.db, coord, agents, settings, logger: silentLogger() });
    await worker.start();

    const tenantId = (await ensureTenant(t.db, "handback")).id;
    const th = await createThread(t.db, tenantId);
    const { run } = await enqueueRun(t.db, {
      tenantId,
      threadId: th.id,
      agent: "handback",
      content: "charge",
      maxAttempts: 3,
      defaultMaxPending: 100,
    });
    await until(() => calls.length === 1, { what: "the first tool call" });

    // Hold the run row: heartbeats (and every other write of the run) now wait.
    const blocker = new pg.Client({ connectionString: t.url });
    await blocker.connect();
    try {
      await blocker.query("BEGIN");
      await blocker.query("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", [run.id]);
      // The watchdog gives the run up locally: its tool call is aborted…
      await until(() => calls[0]!.signal.aborted, { what: "the watchdog to abort the run" });
      // …and the worker hands it back (its release waits for our lock).
      await until(
        async () => {
          const r = await t.db.query<{ n: number }>(
            `SELECT count(*)::int AS n FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'UPDATE runs SET status = ''queued''%'`,
          );
          return (r.rows[0]?.n ?? 0) > 0;
        },
        { what: "the hand-back to wait for the row" },
      );
      await blocker.query("ROLLBACK");
    } finally {
      await blocker.end();
    }

    await until(() => calls.length === 2, { what: "the second tool call" });
    finish!();
    const done = await until(
      async () => {
        const r = await getRun(t.db, tenantId, run.id);
        return r.status === "succeeded" ? r : null;
      },
      { what: "the run to succeed" },
    );
    // The same step, re-run with its key, in the next claim.
    expect(calls.map((c) => c.key)).toEqual([`${run.id}:1`, `${run.id}:1`]);
    // A hand-back takes its claim back; left to lease expiry, the run would show 2 attempts.
    expect(done.attempts).toBe(1);
    expect(done.stalledAttempts).toBe(0);
  });
});
