import { afterAll, beforeAll, expect, it } from "vitest";
import { createTestDb, until, type TestDb } from "../support/pg.js";
import { resolveSettings } from "../../src/config/config.js";
import { createMemoryCoordination } from "../../src/coord/index.js";
import { silentLogger } from "../../src/logger.js";
import { putMemory } from "../../src/state/memories.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createWorker } from "../../src/worker/worker.js";

/** A worker's maintenance sweep deletes memories past their TTL and leaves the rest. */

let t: TestDb;
beforeAll(async () => {
  t = await createTestDb();
});
afterAll(async () => {
  await t?.drop();
});

it("the worker's retention sweep deletes expired memories", async () => {
  const tenantId = (await ensureTenant(t.db, "expiry")).id;
  const base = { namespace: "u1", embedding: [1, 0, 0, 0], embeddingModel: "test:fixed@4" };
  await putMemory(t.db, tenantId, { ...base, text: "short-lived", ttlMs: 1 });
  await putMemory(t.db, tenantId, { ...base, text: "kept", ttlMs: 3_600_000 });
  await putMemory(t.db, tenantId, { ...base, text: "forever" });
  const rows = async () =>
    (await t.db.query<{ text: string }>("SELECT text FROM memories ORDER BY text")).rows.map((r) => r.text);
  expect(await rows()).toEqual(["forever", "kept", "short-lived"]);

  const coord = createMemoryCoordination({ events: { maxLen: 100, ttlMs: 60_000 } });
  const settings = resolveSettings({
    flags: { retention: { sweepIntervalMs: 50 }, worker: { pollMs: 100 } },
  });
  const worker = createWorker({ db: t.db, coord, agents: new Map(), settings, logger: silentLogger() });
  await worker.start();
  try {
    await until(async () => ((await rows()).length === 2 ? true : null), {
      what: "the expired memory to go",
    });
    expect(await rows()).toEqual(["forever", "kept"]);
  } finally {
    await worker.stop({ graceMs: 100 });
    await coord.close();
  }
});
