import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { createTestDb, until, type TestDb } from "../../test/support/pg.js";
import { silentLogger } from "../logger.js";
import { isCapstanError, LeaseLostError } from "../errors.js";
import { createClaimer } from "./claimer.js";
import { appendLlmStep, readJournal, recordToolIntent, recordToolOutcome } from "./journal.js";
import {
  cancelRun,
  claimRun,
  enqueueRun,
  finishRun,
  getRun,
  heartbeat,
  pruneFinished,
  reclaimExpired,
  releaseRun,
  resumeRun,
  suspendRun,
  type EnqueueInput,
} from "./scheduler.js";
import { ensureTenant, updateTenantLimits } from "./tenants.js";
import { createThread, readHistory } from "./threads.js";
import type { ClaimedRun } from "./types.js";
import { listEvents } from "./events.js";

// A fresh database per test: claims are global, so tests must not see each other's runs.
let t: TestDb;
beforeEach(async () => {
  t = await createTestDb({ poolSize: 12 });
});
afterEach(async () => {
  await t?.drop();
});

const base = { maxAttempts: 3, defaultMaxPending: 100_000, agent: "a" };
const enqueue = (tenantId: string, threadId: string, content: unknown, extra: Partial<EnqueueInput> = {}) =>
  enqueueRun(t.db, { ...base, tenantId, threadId, content, ...extra });
const claim = (workerId = "w", leaseMs = 30_000) => claimRun(t.db, { workerId, leaseMs });
const succeed = (run: ClaimedRun, text = "ok") =>
  finishRun(t.db, run.lease, run.threadId, {
    status: "succeeded",
    messages: [{ role: "assistant", content: text }],
  });

async function tenant(name = "t" + Math.random().toString(36).slice(2)) {
  return ensureTenant(t.db, name);
}

describe("scheduler", () => {
  it("8 concurrent claimers over 2,000 runs on 50 threads: each run once, FIFO per thread, no overlap", async () => {
    const ten = await tenant();
    const threads = await Promise.all(Array.from({ length: 50 }, () => createThread(t.db, ten.id)));
    // Interleave threads so claimers contend on every thread at once.
    for (let i = 0; i < 40; i++) {
      await Promise.all(threads.map((th) => enqueue(ten.id, th.id, `m${i}`)));
    }
    const claimedBy = new Map<string, number>();
    let done = 0;
    const claimer = async (w: number) => {
      for (;;) {
        const run = await claim(`w${w}`);
        if (!run) {
          if (done >= 2000) return;
          await new Promise((r) => setTimeout(r, 2));
          continue;
        }
        claimedBy.set(run.id, (claimedBy.get(run.id) ?? 0) + 1);
        await succeed(run);
        done++;
      }
    };
    await Promise.all(Array.from({ length: 8 }, (_, w) => claimer(w)));

    expect(claimedBy.size).toBe(2000);
    expect([...claimedBy.values()].every((n) => n === 1)).toBe(true);
    const rows = await t.db.query<{ thread_id: string; seq: number; started_at: Date; finished_at: Date }>(
      "SELECT thread_id, seq, started_at, finished_at FROM runs WHERE tenant_id = $1 ORDER BY thread_id, seq",
      [ten.id],
    );
    const byThread = new Map<string, typeof rows.rows>();
    for (const r of rows.rows) byThread.set(r.thread_id, [...(byThread.get(r.thread_id) ?? []), r]);
    for (const runs of byThread.values()) {
      for (let i = 1; i < runs.length; i++) {
        // The next run of a thread starts only after the previous one finished.
        expect(runs[i]!.started_at.getTime()).toBeGreaterThanOrEqual(runs[i - 1]!.finished_at.getTime());
      }
    }
    // Thread history alternates user/assistant in run order, gap-free.
    const h = await readHistory(t.db, threads[0]!.id);
    expect(h.map((m) => m.seq)).toEqual(Array.from({ length: 80 }, (_, i) => i + 1));
    expect(h.filter((m) => m.role === "user").map((m) => m.content)).toEqual(
      Array.from({ length: 40 }, (_, i) => `m${i}`),
    );
    expect(h.map((m) => m.role)).toEqual(
      Array.from({ length: 80 }, (_, i) => (i % 2 ? "assistant" : "user")),
    );
  });

  it("reclaims an expired lease; lost attempts that journal nothing fail the run after the limit", async () => {
    const ten = await tenant();
    const th = await createThread(t.db, ten.id);
    const { run } = await enqueue(ten.id, th.id, "hi", { maxAttempts: 2 });
    const next = await enqueue(ten.id, th.id, "queued behind");
    const a = await claim("dead-1", 100);
    expect(a?.id).toBe(run.id);
    expect(a?.attempts).toBe(1);
    await until(async () => (await reclaimExpired(t.db)).requeued.includes(run.id), { what: "reclaim" });
    expect((await getRun(t.db, ten.id, run.id)).stalledAttempts).toBe(1);
    const b = await claim("w2", 100);
    expect(b?.id).toBe(run.id);
    expect(b?.attempts).toBe(2);
    expect(b!.lease.epoch).toBeGreaterThan(a!.lease.epoch);
    await until(async () => (await reclaimExpired(t.db)).failed.includes(run.id), { what: "exhaustion" });
    const failed = await getRun(t.db, ten.id, run.id);
    expect(failed.status).toBe("failed");
    expect(failed.error).toMatchObject({
      code: "attempts_exhausted",
      step_no: 0,
      kind: "llm",
      lost_attempts: 2,
    });
    expect(failed.error?.message).toMatch(/2 attempts in a row at step 0 \(llm\)/);
    // The thread is free again: the queued run is promoted and claimable.
    const c = await claim("w3");
    expect(c?.id).toBe(next.run.id);
  });

  const llmStep = (stepNo: number, toolCalls: { toolName: string }[] = []) => ({
    stepNo,
    response: {
      text: "",
      toolCalls: toolCalls.map((c, i) => ({ toolCallId: `c${stepNo}.${i}`, input: {}, ...c })),
      finishReason: toolCalls.length ? "tool-calls" : "stop",
    },
    usage: { inputTokens: 1, outputTokens: 1 },
    startedAt: new Date(),
  });
  const intent = (r: ClaimedRun, stepNo: number, toolName: string) =>
    recordToolIntent(t.db, r.lease, {
      stepNo,
      toolName,
      toolCallId: `c${stepNo}`,
      effect: "idempotent",
      idempotencyKey: `${r.id}:${stepNo}`,
      args: {},
    });
  const loseLease = async (runId: string) =>
    until(async () => (await reclaimExpired(t.db)).requeued.includes(runId), { what: "reclaim" });

  it("a run that journals a step in every attempt survives any number of lost leases", async () => {
    const ten = await tenant();
    const th = await createThread(t.db, ten.id);
    const { run } = await enqueue(ten.id, th.id, "hi", { maxAttempts: 2 });
    for (let k = 0; k < 6; k++) {
      const r = (await claim(`w${k}`, 100))!;
      expect(r.id).toBe(run.id);
      // One new step per attempt, alternating an LLM step that calls a tool and that tool's intent
      // and outcome: every kind of journal write counts as progress.
      if (k % 2 === 0) await appendLlmStep(t.db, r.lease, llmStep(k, [{ toolName: "charge" }]));
      else {
        await intent(r, k, "charge");
        await recordToolOutcome(t.db, r.lease, { stepNo: k, status: "completed", result: {} });
      }
      await loseLease(run.id);
      expect(await getRun(t.db, ten.id, run.id)).toMatchObject({ status: "queued", stalledAttempts: 0 });
    }
    const last = (await claim("w-last"))!;
    expect(last.attempts).toBe(7);
    await succeed(last);
    expect((await getRun(t.db, ten.id, run.id)).status).toBe("succeeded");
  });

  it("a worker that dies in the same tool call each time: the run fails naming that step", async () => {
    const ten = await tenant();
    const th = await createThread(t.db, ten.id);
    const { run } = await enqueue(ten.id, th.id, "hi", { maxAttempts: 3 });
    // Attempt 1 journals the LLM step and the intent of step 1, then its worker dies: progress.
    const first = (await claim("w0", 100))!;
    await appendLlmStep(t.db, first.lease, llmStep(0, [{ toolName: "lookup" }, { toolName: "poison" }]));
    await recordToolIntent(t.db, first.lease, {
      stepNo: 1,
      toolName: "lookup",
      toolCallId: "c1",
      effect: "pure",
      idempotencyKey: `${run.id}:1`,
      args: {},
    });
    await recordToolOutcome(t.db, first.lease, { stepNo: 1, status: "completed", result: {} });
    await intent(first, 2, "poison");
    await loseLease(run.id);
    expect((await getRun(t.db, ten.id, run.id)).stalledAttempts).toBe(0);
    // Attempts 2 and 3 only re-record the open intent: no progress, charged.
    for (const k of [1, 2]) {
      const r = (await claim(`w${k}`, 100))!;
      await intent(r, 2, "poison");
      await loseLease(run.id);
      expect((await getRun(t.db, ten.id, run.id)).stalledAttempts).toBe(k);
    }
    const r = (await claim("w3", 100))!;
    await intent(r, 2, "poison");
    await until(async () => (await reclaimExpired(t.db)).failed.includes(run.id), { what: "exhaustion" });
    const failed = await getRun(t.db, ten.id, run.id);
    expect(failed.status).toBe("failed");
    expect(failed.attempts).toBe(4);
    expect(failed.error).toMatchObject({
      code: "attempts_exhausted",
      step_no: 2,
      kind: "tool",
      tool: "poison",
      lost_attempts: 3,
    });
    expect(failed.error?.message).toMatch(/step 2 \(tool poison\)/);
  });

  it("a step journaled by the late owner of an expired lease before the sweep counts as progress", async () => {
    const ten = await tenant();
    const th = await createThread(t.db, ten.id);
    const { run } = await enqueue(ten.id, th.id, "hi", { maxAttempts: 1 });
    const r = (await claim("slow", 100))!;
    await until(
      async () => {
        const x = await t.db.query("SELECT 1 FROM runs WHERE id = $1 AND lease_expires_at < now()", [run.id]);
        return x.rows.length > 0;
      },
      { what: "the lease to expire" },
    );
    // Expired but not yet reclaimed: the epoch still holds, the write commits.
    await appendLlmStep(t.db, r.lease, llmStep(0));
    expect((await reclaimExpired(t.db)).requeued).toEqual([run.id]);
    expect(await getRun(t.db, ten.id, run.id)).toMatchObject({ status: "queued", stalledAttempts: 0 });
  });

  it("graceful hand-offs are never charged; one that made progress clears the lost-attempt count", async () => {
    const ten = await tenant();
    const th = await createThread(t.db, ten.id);
    const { run } = await enqueue(ten.id, th.id, "hi", { maxAttempts: 2 });
    await claim("dies", 100);
    await loseLease(run.id);
    expect((await getRun(t.db, ten.id, run.id)).stalledAttempts).toBe(1);
    for (let k = 0; k < 4; k++) {
      const r = (await claim(`drain${k}`))!;
      expect(await releaseRun(t.db, r.lease)).toBe(true);
    }
    expect(await getRun(t.db, ten.id, run.id)).toMatchObject({ stalledAttempts: 1, attempts: 1 });
    const r = (await claim("drain-after-step"))!;
    await appendLlmStep(t.db, r.lease, llmStep(0, [{ toolName: "charge" }]));
    expect(await releaseRun(t.db, r.lease)).toBe(true);
    expect(await getRun(t.db, ten.id, run.id)).toMatchObject({ status: "queued", stalledAttempts: 0 });
  });

  it("refuses writes with a stale epoch and changes nothing", async () => {
    const ten = await tenant();
    const th = await createThread(t.db, ten.id);
    const { run } = await enqueue(ten.id, th.id, "hi");
    const zombie = (await claim("zombie", 100))!;
    await until(async () => (await reclaimExpired(t.db)).requeued.includes(run.id), { what: "reclaim" });
    const owner = (await claim("owner"))!;
    const llm = {
      stepNo: 0,
      response: { text: "x" },
      usage: { inputTokens: 5, outputTokens: 7 },
      startedAt: new Date(),
    };
    await expect(appendLlmStep(t.db, zombie.lease, llm)).rejects.toBeInstanceOf(LeaseLostError);
    await expect(
      finishRun(t.db, zombie.lease, th.id, {
        status: "succeeded",
        messages: [{ role: "assistant", content: "z" }],
      }),
    ).rejects.toBeInstanceOf(LeaseLostError);
    expect(await heartbeat(t.db, [zombie.lease], 1000)).toEqual(new Set());
    expect(await readJournal(t.db, run.id)).toEqual([]);
    expect((await getRun(t.db, ten.id, run.id)).usage).toEqual({
      inputTokens: 0,
      outputTokens: 0,
      cachedInputTokens: 0,
    });
    expect((await readHistory(t.db, th.id)).length).toBe(1);
    // The owner's writes go through.
    await appendLlmStep(t.db, owner.lease, llm, [{ type: "step.completed", data: { step_no: 0 } }]);
    expect((await readJournal(t.db, run.id)).length).toBe(1);
    expect((await getRun(t.db, ten.id, run.id)).usage).toEqual({
      inputTokens: 5,
      outputTokens: 7,
      cachedInputTokens: 0,
    });
  });

  it("journals tool intent then outcome; an outcome cannot be written twice", async () => {
    const ten = await tenant();
    const th = await createThread(t.db, ten.id);
    await enqueue(ten.id, th.id, "hi");
    const r = (await claim())!;
    const intent = {
      stepNo: 1,
      toolName: "refund",
      toolCallId: "c1",
      effect: "idempotent" as const,
      idempotencyKey: `${r.id}:1`,
      args: { orderId: "o1" },
    };
    await recordToolIntent(t.db, r.lease, intent);
    // A retry of the intent (crash before the outcome) is allowed…
    await recordToolIntent(t.db, r.lease, intent);
    await recordToolOutcome(t.db, r.lease, { stepNo: 1, status: "completed", result: { ok: true } });
    // …but once the outcome is there, the step is closed.
    await expect(recordToolIntent(t.db, r.lease, intent)).rejects.toSatisfy((e) =>
      isCapstanError(e, "journal_conflict"),
    );
    await expect(recordToolOutcome(t.db, r.lease, { stepNo: 1, status: "completed" })).rejects.toSatisfy(
      (e) => isCapstanError(e, "journal_conflict"),
    );
    const j = await readJournal(t.db, r.id);
    expect(j).toMatchObject([
      { stepNo: 1, status: "completed", output: { ok: true }, idempotencyKey: `${r.id}:1` },
    ]);
  });

  it("multitask reject answers a conflict; interrupt cancels the active run and the new one starts next", async () => {
    const ten = await tenant();
    const th = await createThread(t.db, ten.id);
    const first = await enqueue(ten.id, th.id, "one");
    const queued = await enqueue(ten.id, th.id, "two");
    await expect(enqueue(ten.id, th.id, "x", { multitask: "reject" })).rejects.toSatisfy((e) =>
      isCapstanError(e, "thread_busy"),
    );
    const active = (await claim())!;
    expect(active.id).toBe(first.run.id);
    const inter = await enqueue(ten.id, th.id, "three", { multitask: "interrupt" });
    expect(inter.events.map((e) => e.type)).toEqual(["run.cancelled", "run.cancelled"]);
    expect((await getRun(t.db, ten.id, first.run.id)).status).toBe("cancelled");
    expect((await getRun(t.db, ten.id, queued.run.id)).status).toBe("cancelled");
    const next = (await claim())!;
    expect(next.id).toBe(inter.run.id);
    // The cancelled run's worker is fenced.
    await expect(succeed(active)).rejects.toBeInstanceOf(LeaseLostError);
    // The never-started run's input never joined the history.
    expect((await readHistory(t.db, th.id)).map((m) => m.content)).toEqual(["one", "three"]);
  });

  it("serves a small tenant within the first claims despite a large backlog elsewhere", async () => {
    const big = await tenant();
    const small = await tenant();
    const bigThreads = await Promise.all(Array.from({ length: 100 }, () => createThread(t.db, big.id)));
    for (let i = 0; i < 10; i++) await Promise.all(bigThreads.map((th) => enqueue(big.id, th.id, `b${i}`)));
    const smallIds = new Set<string>();
    for (let i = 0; i < 10; i++) {
      const th = await createThread(t.db, small.id);
      smallIds.add((await enqueue(small.id, th.id, `s${i}`)).run.id);
    }
    const claimed: ClaimedRun[] = [];
    for (let i = 0; i < 20; i++) claimed.push((await claim())!);
    expect(claimed.filter((r) => smallIds.has(r.id)).length).toBe(10);
  });

  it("enforces a per-tenant concurrency cap", async () => {
    const ten = await tenant();
    await updateTenantLimits(t.db, ten.id, { maxConcurrency: 2 });
    for (let i = 0; i < 4; i++) await enqueue(ten.id, (await createThread(t.db, ten.id)).id, "x");
    const a = (await claim())!;
    const b = (await claim())!;
    expect(a.tenantId).toBe(ten.id);
    expect(b.tenantId).toBe(ten.id);
    expect(await claim()).toBeNull();
    await succeed(a);
    const c = await claim();
    expect(c?.tenantId).toBe(ten.id);
    await succeed(b);
    await succeed(c!);
    await succeed((await claim())!);
  });

  it("tenants at their cap do not crowd others out of the claim fan-out", async () => {
    // 9 capped tenants (more than the fan-out of 8), each at its cap with work queued:
    // claimed longest ago, so they sort first.
    for (let i = 0; i < 9; i++) {
      const capped = await tenant();
      await updateTenantLimits(t.db, capped.id, { maxConcurrency: 1 });
      for (let k = 0; k < 2; k++) await enqueue(capped.id, (await createThread(t.db, capped.id)).id, "x");
      expect((await claim())?.tenantId).toBe(capped.id);
    }
    const other = await tenant();
    await enqueue(other.id, (await createThread(t.db, other.id)).id, "first");
    expect((await claim())?.tenantId).toBe(other.id);
    await enqueue(other.id, (await createThread(t.db, other.id)).id, "second");
    expect((await claim())?.tenantId).toBe(other.id);
  });

  it("refuses a run beyond the tenant's pending cap", async () => {
    const ten = await tenant();
    await updateTenantLimits(t.db, ten.id, { maxPending: 2 });
    const th = await createThread(t.db, ten.id);
    await enqueue(ten.id, th.id, "1");
    await enqueue(ten.id, th.id, "2");
    await expect(enqueue(ten.id, th.id, "3")).rejects.toSatisfy((e) => isCapstanError(e, "too_many_runs"));
    await cancelRun(t.db, ten.id, (await claim())!.id);
    await cancelRun(t.db, ten.id, (await claim())!.id);
  });

  it("returns the original run for a repeated idempotency key and refuses a different body", async () => {
    const ten = await tenant();
    const th = await createThread(t.db, ten.id);
    const same = { idempotencyKey: "k1", requestHash: "h1" };
    const [a, b] = await Promise.all([enqueue(ten.id, th.id, "x", same), enqueue(ten.id, th.id, "x", same)]);
    expect(a.run.id).toBe(b.run.id);
    expect([a.created, b.created].sort()).toEqual([false, true]);
    await expect(enqueue(ten.id, th.id, "y", { idempotencyKey: "k1", requestHash: "h2" })).rejects.toSatisfy(
      (e) => isCapstanError(e, "idempotency_key_reused"),
    );
    await cancelRun(t.db, ten.id, a.run.id);
  });

  it("cancels queued, running and waiting runs; resumes a waiting run; releases on shutdown", async () => {
    const ten = await tenant();
    const th = await createThread(t.db, ten.id);
    const r1 = await enqueue(ten.id, th.id, "1");
    const r2 = await enqueue(ten.id, th.id, "2");
    await cancelRun(t.db, ten.id, r2.run.id); // queued, not head
    const c1 = (await claim())!;
    await suspendRun(t.db, c1.lease, { reason: "approval", tool: "refund" });
    expect((await getRun(t.db, ten.id, r1.run.id)).status).toBe("waiting");
    expect(await claim()).toBeNull();
    await expect(resumeRun(t.db, ten.id, r2.run.id, { decision: "approve" })).rejects.toSatisfy((e) =>
      isCapstanError(e, "run_not_waiting"),
    );
    await resumeRun(t.db, ten.id, r1.run.id, { decision: "approve" });
    const c2 = (await claim("w-a"))!;
    expect(c2.id).toBe(r1.run.id);
    expect(c2.resume).toMatchObject({ decision: "approve", wait: { reason: "approval" } });
    // Graceful release: back in the queue at once, without burning an attempt.
    expect(await releaseRun(t.db, c2.lease)).toBe(true);
    const c3 = (await claim("w-b"))!;
    expect(c3.id).toBe(r1.run.id);
    expect(c3.attempts).toBe(c2.attempts);
    const { run } = await cancelRun(t.db, ten.id, r1.run.id); // running
    expect(run.status).toBe("cancelled");
    await expect(succeed(c3)).rejects.toBeInstanceOf(LeaseLostError);
    const events = await listEvents(t.db, r1.run.id, 0, 100);
    expect(events.map((e) => e.id)).toEqual(events.map((_, i) => i + 1));
    expect(events.map((e) => e.type)).toEqual(["run.waiting", "run.cancelled"]);
    // Cancelling again is a no-op; a foreign tenant sees nothing.
    expect((await cancelRun(t.db, ten.id, r1.run.id)).events).toEqual([]);
    const other = await tenant();
    await expect(cancelRun(t.db, other.id, r1.run.id)).rejects.toSatisfy((e) =>
      isCapstanError(e, "not_found"),
    );
  });

  it("prunes finished runs past retention and keeps the thread history", async () => {
    const ten = await tenant();
    const th = await createThread(t.db, ten.id);
    const { run } = await enqueue(ten.id, th.id, "1");
    await succeed((await claim())!);
    expect(
      (await pruneFinished(t.db, { runsOlderThanMs: 3_600_000, idempotencyKeysOlderThanMs: 3_600_000 })).runs,
    ).toBe(0);
    await t.db.query("UPDATE runs SET finished_at = now() - interval '2 hours' WHERE id = $1", [run.id]);
    const pruned = await pruneFinished(t.db, {
      runsOlderThanMs: 3_600_000,
      idempotencyKeysOlderThanMs: 3_600_000,
    });
    expect(pruned.runs).toBeGreaterThanOrEqual(1);
    await expect(getRun(t.db, ten.id, run.id)).rejects.toSatisfy((e) => isCapstanError(e, "not_found"));
    expect((await readHistory(t.db, th.id)).length).toBe(2);
  });

  it("a claimer waiting on LISTEN picks up a new run without waiting for its 30 s poll", async () => {
    const ten = await tenant();
    const th = await createThread(t.db, ten.id);
    const claimed: ClaimedRun[] = [];
    const wakes: string[] = [];
    let idle!: () => void;
    const firstIdle = new Promise<void>((r) => (idle = r));
    const claimer = createClaimer({
      db: t.db,
      workerId: "listener",
      leaseMs: 30_000,
      pollMs: 30_000,
      capacity: () => 10,
      onClaim: (r) => claimed.push(r),
      logger: silentLogger(),
      reclaimEveryMs: 3_600_000,
      onSleep: () => idle(),
      onWake: (reason) => wakes.push(reason),
    });
    await claimer.start();
    await firstIdle; // asleep for up to 30 s unless notified
    const { run } = await enqueue(ten.id, th.id, "wake up");
    await until(() => claimed.find((r) => r.id === run.id), { timeoutMs: 10_000, what: "pickup" });
    expect(wakes[0]).toBe("notify");
    await claimer.stop();
    await succeed(claimed[0]!);
  });
});
