import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isCapstanError } from "../../src/errors.js";
import { latestSummary, saveSummary } from "../../src/state/summaries.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import { createTestDb, type TestDb } from "../support/pg.js";

let t: TestDb;
let tenantId: string;
beforeAll(async () => {
  t = await createTestDb();
  tenantId = (await ensureTenant(t.db, "summaries")).id;
});
afterAll(async () => {
  await t?.drop();
});

describe("thread summaries", () => {
  it("chains contiguous ranges; the latest is the one covering the most", async () => {
    const thread = await createThread(t.db, tenantId);
    expect(await latestSummary(t.db, thread.id)).toBeNull();
    const s1 = await saveSummary(t.db, {
      threadId: thread.id,
      fromSeq: 1,
      toSeq: 40,
      summary: "first",
      runId: null,
    });
    expect(s1).toMatchObject({ threadId: thread.id, fromSeq: 1, toSeq: 40, summary: "first", runId: null });
    const runId = "00000000-0000-4000-8000-000000000001";
    await saveSummary(t.db, { threadId: thread.id, fromSeq: 41, toSeq: 90, summary: "second", runId });
    expect(await latestSummary(t.db, thread.id)).toMatchObject({
      fromSeq: 41,
      toSeq: 90,
      summary: "second",
      runId,
    });
  });

  it("is idempotent on (thread, toSeq): saving again returns the stored summary unchanged", async () => {
    const thread = await createThread(t.db, tenantId);
    const a = await saveSummary(t.db, {
      threadId: thread.id,
      fromSeq: 1,
      toSeq: 10,
      summary: "original",
      runId: null,
    });
    const b = await saveSummary(t.db, {
      threadId: thread.id,
      fromSeq: 1,
      toSeq: 10,
      summary: "re-generated",
      runId: null,
    });
    expect(b).toEqual(a);
    const rows = await t.db.query("SELECT count(*)::int AS n FROM thread_summaries WHERE thread_id = $1", [
      thread.id,
    ]);
    expect(rows.rows[0]).toEqual({ n: 1 });
    // Also after a later summary exists (a late replay of an old step).
    await saveSummary(t.db, { threadId: thread.id, fromSeq: 11, toSeq: 20, summary: "next", runId: null });
    expect(
      await saveSummary(t.db, { threadId: thread.id, fromSeq: 1, toSeq: 10, summary: "again", runId: null }),
    ).toEqual(a);
  });

  it("refuses a range that does not continue the chain, writing nothing", async () => {
    const thread = await createThread(t.db, tenantId);
    await expect(
      saveSummary(t.db, { threadId: thread.id, fromSeq: 5, toSeq: 10, summary: "gap", runId: null }),
    ).rejects.toSatisfy((e) => isCapstanError(e, "journal_conflict"));
    await saveSummary(t.db, { threadId: thread.id, fromSeq: 1, toSeq: 10, summary: "ok", runId: null });
    await expect(
      saveSummary(t.db, { threadId: thread.id, fromSeq: 5, toSeq: 12, summary: "overlap", runId: null }),
    ).rejects.toSatisfy((e) => isCapstanError(e, "journal_conflict"));
    await expect(
      saveSummary(t.db, { threadId: thread.id, fromSeq: 12, toSeq: 11, summary: "backwards", runId: null }),
    ).rejects.toSatisfy((e) => isCapstanError(e, "validation_failed"));
    await expect(
      saveSummary(t.db, { threadId: thread.id, fromSeq: 11, toSeq: 12, summary: "", runId: null }),
    ).rejects.toSatisfy((e) => isCapstanError(e, "validation_failed"));
    expect((await latestSummary(t.db, thread.id))?.toSeq).toBe(10);
  });

  it("goes with its thread", async () => {
    const thread = await createThread(t.db, tenantId);
    await saveSummary(t.db, { threadId: thread.id, fromSeq: 1, toSeq: 3, summary: "s", runId: null });
    await t.db.query("DELETE FROM threads WHERE id = $1", [thread.id]);
    expect(await latestSummary(t.db, thread.id)).toBeNull();
  });
});
