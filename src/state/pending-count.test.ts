/**
 * `tenant_pending` (migration 0006) must equal the tenant's queued + running
 * + waiting runs after every path that moves runs, and the cap it backs must
 * hold exactly when enqueues race.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDb, type TestDb } from "../../test/support/pg.js";
import { isCapstanError } from "../errors.js";
import {
  cancelRun,
  claimRun,
  enqueueRun,
  finishRun,
  pruneFinished,
  reclaimExpired,
  releaseRun,
  resumeRun,
  suspendRun,
  type EnqueueInput,
} from "./scheduler.js";
import { ensureTenant, updateTenantLimits } from "./tenants.js";
import { createThread } from "./threads.js";

let t: TestDb;
beforeAll(async () => {
  t = await createTestDb({ poolSize: 12 });
});
afterAll(async () => {
  await t?.drop();
});

const base = { maxAttempts: 1, defaultMaxPending: 1_000, agent: "a" };
const enqueue = (tenantId: string, threadId: string, extra: Partial<EnqueueInput> = {}) =>
  enqueueRun(t.db, { ...base, tenantId, threadId, content: "x", ...extra });

/** The counter and the truth, per tenant. */
async function counts(tenantId: string): Promise<{ counter: number; actual: number }> {
  const r = await t.db.query<{ counter: number | null; actual: number }>(
    `SELECT (SELECT sum(pending)::int FROM tenant_pending WHERE tenant_id = $1) AS counter,
            (SELECT count(*)::int FROM runs WHERE tenant_id = $1 AND status IN ('queued', 'running', 'waiting')) AS actual`,
    [tenantId],
  );
  return { counter: r.rows[0]!.counter ?? 0, actual: r.rows[0]!.actual };
}

async function expectExact(tenantId: string, actual: number): Promise<void> {
  expect(await counts(tenantId)).toEqual({ counter: actual, actual });
}

describe("the per-tenant pending count", () => {
  it("follows enqueue, claim, suspend, resume, release, finish, cancel, interrupt, reclaim and retention", async () => {
    const ten = await ensureTenant(t.db, "paths");
    const [a, b, c] = await Promise.all([1, 2, 3].map(() => createThread(t.db, ten.id)));
    await enqueue(ten.id, a!.id);
    await enqueue(ten.id, a!.id);
    await enqueue(ten.id, b!.id);
    await expectExact(ten.id, 3);

    const first = (await claimRun(t.db, { workerId: "w", leaseMs: 60_000 }))!; // queued → running
    await expectExact(ten.id, 3);
    await suspendRun(t.db, first.lease, { reason: "approval" }); // running → waiting
    await expectExact(ten.id, 3);
    await resumeRun(t.db, ten.id, first.id, { decision: "approve" }); // waiting → queued
    const again = (await claimRun(t.db, { workerId: "w", leaseMs: 60_000 }))!;
    expect(await releaseRun(t.db, again.lease)).toBe(true); // running → queued
    await expectExact(ten.id, 3);

    const claimed = (await claimRun(t.db, { workerId: "w", leaseMs: 60_000 }))!;
    await finishRun(t.db, claimed.lease, claimed.threadId, { status: "succeeded" });
    await expectExact(ten.id, 2);

    // Interrupt: the thread's pending runs are cancelled, the new one counted.
    const inter = await enqueue(ten.id, b!.id, { multitask: "interrupt" });
    expect(inter.events.some((e) => e.type === "run.cancelled")).toBe(true);
    await expectExact(ten.id, 2);

    // A refused enqueue (thread busy) counts nothing.
    await expect(enqueue(ten.id, b!.id, { multitask: "reject" })).rejects.toSatisfy((e) =>
      isCapstanError(e, "thread_busy"),
    );
    await expectExact(ten.id, 2);

    // Lease reclaim with no attempts left fails the run.
    await enqueue(ten.id, c!.id);
    const doomed = (await claimRun(t.db, { workerId: "w", leaseMs: 1 }))!;
    await t.db.query("UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE id = $1", [
      doomed.id,
    ]);
    const reclaimed = await reclaimExpired(t.db);
    expect(reclaimed.failed).toContain(doomed.id);
    await expectExact(ten.id, 2);

    const pending = await t.db.query<{ id: string }>(
      "SELECT id FROM runs WHERE tenant_id = $1 AND status IN ('queued', 'running', 'waiting')",
      [ten.id],
    );
    for (const row of pending.rows) await cancelRun(t.db, ten.id, row.id);
    await expectExact(ten.id, 0);

    // Retention deletes finished runs: nothing pending changes.
    await t.db.query("UPDATE runs SET finished_at = now() - interval '2 hours' WHERE tenant_id = $1", [
      ten.id,
    ]);
    expect(
      (await pruneFinished(t.db, { runsOlderThanMs: 3_600_000, idempotencyKeysOlderThanMs: 1 })).runs,
    ).toBe(5);
    await expectExact(ten.id, 0);
  });

  it("stays exact under an operator's direct UPDATE and DELETE, and a tenant's deletion", async () => {
    const ten = await ensureTenant(t.db, "direct");
    const th = await createThread(t.db, ten.id);
    const runs = [];
    for (let i = 0; i < 3; i++) runs.push((await enqueue(ten.id, th.id)).run.id);
    await t.db.query("UPDATE runs SET status = 'failed' WHERE id = $1", [runs[0]]);
    await expectExact(ten.id, 2);
    await t.db.query("DELETE FROM runs WHERE id = $1", [runs[1]]);
    await expectExact(ten.id, 1);
    await t.db.query("UPDATE runs SET status = 'queued' WHERE id = $1", [runs[0]]);
    await expectExact(ten.id, 2);
    await t.db.query("DELETE FROM tenants WHERE id = $1", [ten.id]);
    const left = await t.db.query("SELECT 1 FROM tenant_pending WHERE tenant_id = $1", [ten.id]);
    expect(left.rows).toEqual([]);
  });

  it("holds the cap exactly when 60 enqueues race on 60 threads, and frees a place when a run ends", async () => {
    const ten = await ensureTenant(t.db, "race");
    await updateTenantLimits(t.db, ten.id, { maxPending: 15 });
    const threads = await Promise.all(Array.from({ length: 60 }, () => createThread(t.db, ten.id)));
    const outcomes = await Promise.allSettled(threads.map((th) => enqueue(ten.id, th.id)));
    const accepted = outcomes.filter((o) => o.status === "fulfilled");
    const refused = outcomes.filter(
      (o) => o.status === "rejected" && isCapstanError(o.reason, "too_many_runs"),
    );
    expect(accepted).toHaveLength(15);
    expect(refused).toHaveLength(45);
    await expectExact(ten.id, 15);

    const one = (accepted[0] as PromiseFulfilledResult<Awaited<ReturnType<typeof enqueueRun>>>).value.run;
    await cancelRun(t.db, ten.id, one.id);
    const retry = await Promise.allSettled(threads.slice(0, 5).map((th) => enqueue(ten.id, th.id)));
    expect(retry.filter((o) => o.status === "fulfilled")).toHaveLength(1);
    await expectExact(ten.id, 15);
  });
});
