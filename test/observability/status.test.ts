import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { formatAge, readStatus, renderStatus } from "../../src/cli/status.js";
import { claimRun, enqueueRun, finishRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import { createTestDb, type TestDb } from "../support/pg.js";

/** `capstan status` against real PostgreSQL with a known queue. */

let t: TestDb;
beforeAll(async () => {
  t = await createTestDb();
});
afterAll(async () => {
  await t?.drop();
});

const rule = { targetInFlightPerWorker: 4, minWorkers: 1, maxWorkers: 3 };

describe("capstan status", () => {
  it("prints an empty queue and the warm pool", async () => {
    const out = await renderStatus(t.db, rule);
    expect(out).toContain("ready (claimable)          0\n");
    expect(out).toContain("oldest ready age           -\n");
    expect(out).toContain("desired workers            1 (ceil(0 / 4) = 0, clamped to [1, 3])\n");
    expect(out).not.toContain("by agent and tenant");
  });

  it("prints depth, oldest age, in-flight, throughput and the desired worker count", async () => {
    const tenant = await ensureTenant(t.db, "acme");
    const threads = [];
    for (let i = 0; i < 9; i++) threads.push((await createThread(t.db, tenant.id)).id);
    for (const threadId of threads) {
      await enqueueRun(t.db, {
        tenantId: tenant.id,
        threadId,
        agent: "support",
        content: "hi",
        maxAttempts: 3,
        defaultMaxPending: 1000,
      });
    }
    // A second run on the first thread: blocked behind the first.
    await enqueueRun(t.db, {
      tenantId: tenant.id,
      threadId: threads[0]!,
      agent: "support",
      content: "again",
      maxAttempts: 3,
      defaultMaxPending: 1000,
    });
    // Claim three; two of them finish (one succeeded, one failed) within the last minute.
    const claimed = [];
    for (let i = 0; i < 3; i++)
      claimed.push((await claimRun(t.db, { workerId: `w${i % 2}`, leaseMs: 60_000 }))!);
    await finishRun(t.db, claimed[1]!.lease, claimed[1]!.threadId, { status: "succeeded" });
    await finishRun(t.db, claimed[2]!.lease, claimed[2]!.threadId, {
      status: "failed",
      error: { code: "internal", message: "x" },
    });
    await t.db.query(
      `UPDATE runs SET queued_at = now() - interval '125 seconds'
       WHERE id = (SELECT id FROM runs WHERE status = 'queued' AND ready ORDER BY seq LIMIT 1)`,
    );

    // Within a tenant claims are FIFO: the three first threads' heads. Thread 0's
    // head still runs, so its second run stays blocked.
    expect(claimed.map((c) => c.threadId)).toEqual(threads.slice(0, 3));
    const report = await readStatus(t.db, rule);
    expect(report).toMatchObject({
      ready: 6,
      blocked: 1,
      running: 1,
      waiting: 0,
      finishedLastMinute: { succeeded: 1, failed: 1, cancelled: 0 },
      workersWithLeases: 1,
      demand: 7,
      desiredWorkers: 2,
    });
    expect(report.oldestReadyAgeSeconds).toBeGreaterThanOrEqual(125);

    const out = await renderStatus(t.db, rule);
    expect(out).toContain(`ready (claimable)          6\n`);
    expect(out).toMatch(/oldest ready age +2 min [56] s\n/);
    expect(out).toContain("in flight (running)          1\n");
    expect(out).toContain("throughput (last minute)     2 finished (1 succeeded, 1 failed, 0 cancelled)\n");
    expect(out).toContain(`demand                     7 (`);
    expect(out).toContain(`desired workers            2 (ceil(7 / 4) = 2, clamped to [1, 3])\n`);
    expect(out).toMatch(/AGENT +TENANT +READY +BLOCKED +RUNNING +WAITING +OLDEST/);
    expect(out).toMatch(new RegExp(`support +acme +6 +`));

    // The clamp: a low per-worker target asks for more than the maximum.
    const capped = await readStatus(t.db, { ...rule, targetInFlightPerWorker: 1 });
    expect(capped.desiredWorkers).toBe(3);
  });

  it("refuses a rule that cannot be applied", async () => {
    await expect(
      readStatus(t.db, { targetInFlightPerWorker: 0, minWorkers: 1, maxWorkers: 2 }),
    ).rejects.toThrow(/targetInFlightPerWorker must be a positive integer/);
    await expect(
      readStatus(t.db, { targetInFlightPerWorker: 5, minWorkers: 4, maxWorkers: 2 }),
    ).rejects.toThrow(/maxWorkers must be at least minWorkers/);
  });

  it("formats ages", () => {
    expect(formatAge(null)).toBe("-");
    expect(formatAge(1.26)).toBe("1.3 s");
    expect(formatAge(125)).toBe("2 min 5 s");
    expect(formatAge(7300)).toBe("2 h 1 min");
  });
});
