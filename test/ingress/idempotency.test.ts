import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { RunningIngress } from "../../src/ingress/server.js";
import { call, createHarness, obj, rowCounts, threadAndRun, type Harness } from "./harness.js";

let h: Harness;
let api: RunningIngress;
beforeEach(async () => {
  h = await createHarness();
  api = await h.start();
});
afterEach(async () => {
  await h?.close();
});

const idem = (key: string) => ({ "idempotency-key": key });

describe("Idempotency-Key on every POST (Postgres-backed, survives a Redis flush)", () => {
  it("create thread: same key + body → same answer; key order in the body does not matter; other body → 422", async () => {
    const first = await call(api.url, "POST", "/v1/threads", {
      key: h.a.key,
      json: { metadata: { a: 1, b: 2 } },
      headers: idem("t-1"),
    });
    expect(first.status).toBe(201);
    const again = await call(api.url, "POST", "/v1/threads", {
      key: h.a.key,
      raw: '{ "metadata": { "b": 2, "a": 1 } }',
      headers: { ...idem("t-1"), "content-type": "application/json" },
    });
    expect(again.status).toBe(201);
    expect(again.body).toEqual(first.body);
    expect(again.headers.get("idempotent-replayed")).toBe("true");
    // Location on the keyed path too, first answer and replay alike.
    const location = `/v1/threads/${String((first.body as { id: string }).id)}`;
    expect(first.headers.get("location")).toBe(location);
    expect(again.headers.get("location")).toBe(location);
    expect((await rowCounts(h.t)).threads).toBe(1);

    const other = await call(api.url, "POST", "/v1/threads", {
      key: h.a.key,
      json: { metadata: { a: 2 } },
      headers: idem("t-1"),
    });
    expect(other.status).toBe(422);
    expect(obj(other.body)).toMatchObject({
      code: "idempotency_key_reused",
      fields: [{ field: "Idempotency-Key" }],
    });
    expect((await rowCounts(h.t)).threads).toBe(1);
  });

  it("create run: same key + body → the same run (202); other body or other thread → 422; concurrent duplicates → one run", async () => {
    const th = await call(api.url, "POST", "/v1/threads", { key: h.a.key, json: {} });
    const threadId = obj(th.body).id as string;
    const body = { agent: "echo", input: "pay once", metadata: { order: 7 } };
    const results = await Promise.all(
      Array.from({ length: 10 }, () =>
        call(api.url, "POST", `/v1/threads/${threadId}/runs`, {
          key: h.a.key,
          json: body,
          headers: idem("r-1"),
        }),
      ),
    );
    for (const r of results) expect(r.status, r.text).toBe(202);
    const ids = new Set(results.map((r) => obj(r.body).id));
    expect(ids.size).toBe(1);
    expect(results.filter((r) => r.headers.get("idempotent-replayed") === "true")).toHaveLength(9);
    const counts = await rowCounts(h.t);
    expect(counts.runs).toBe(1);
    expect(counts.messages).toBe(1);

    const changed = await call(api.url, "POST", `/v1/threads/${threadId}/runs`, {
      key: h.a.key,
      json: { ...body, input: "pay twice" },
      headers: idem("r-1"),
    });
    expect(changed.status).toBe(422);
    expect(obj(changed.body).code).toBe("idempotency_key_reused");

    const th2 = await call(api.url, "POST", "/v1/threads", { key: h.a.key, json: {} });
    const elsewhere = await call(api.url, "POST", `/v1/threads/${String(obj(th2.body).id)}/runs`, {
      key: h.a.key,
      json: body,
      headers: idem("r-1"),
    });
    expect(elsewhere.status).toBe(422);
    expect((await rowCounts(h.t)).runs).toBe(1);
  });

  it("a key is bound to one kind of request: a thread's key cannot create a run, nor a run's key a thread", async () => {
    await call(api.url, "POST", "/v1/threads", { key: h.a.key, json: {}, headers: idem("k-thread") });
    const { threadId } = await threadAndRun(api.url, h.a.key);
    const asRun = await call(api.url, "POST", `/v1/threads/${threadId}/runs`, {
      key: h.a.key,
      json: { agent: "echo", input: "x" },
      headers: idem("k-thread"),
    });
    expect(asRun.status).toBe(422);
    await call(api.url, "POST", `/v1/threads/${threadId}/runs`, {
      key: h.a.key,
      json: { agent: "echo", input: "y" },
      headers: idem("k-run"),
    });
    const asThread = await call(api.url, "POST", "/v1/threads", {
      key: h.a.key,
      json: {},
      headers: idem("k-run"),
    });
    expect(asThread.status).toBe(422);
  });

  it("cancel and resume: replayed with the stored answer; the effect (and its events) happen once", async () => {
    const { runId } = await threadAndRun(api.url, h.a.key);
    const c1 = await call(api.url, "POST", `/v1/runs/${runId}/cancel`, {
      key: h.a.key,
      headers: idem("c-1"),
    });
    const c2 = await call(api.url, "POST", `/v1/runs/${runId}/cancel`, {
      key: h.a.key,
      headers: idem("c-1"),
    });
    expect(c1.status).toBe(200);
    expect(c2.status).toBe(200);
    expect(c2.body).toEqual(c1.body);
    expect(c2.headers.get("idempotent-replayed")).toBe("true");
    const evs = await h.t.db.query<{ type: string }>("SELECT type FROM run_events WHERE run_id = $1", [
      runId,
    ]);
    expect(evs.rows.map((r) => r.type)).toEqual(["run.cancelled"]);

    // A failed effect stores nothing: the same key may be retried (and fails the same way).
    const r1 = await call(api.url, "POST", `/v1/runs/${runId}/resume`, {
      key: h.a.key,
      json: { decision: "approve" },
      headers: idem("res-1"),
    });
    expect(r1.status).toBe(409);
    const keys = await h.t.db.query<{ key: string }>("SELECT key FROM idempotency_keys ORDER BY key");
    expect(keys.rows.map((r) => r.key)).toEqual(["c-1"]);
  });

  it("survives losing every Redis key of this deployment (a simulated FLUSHALL)", async () => {
    // A bucket refilling for an hour: its key outlives the test (a key expires once its bucket
    // is full again, which at the default rate is well under a second after a few requests).
    const api = await h.start({ rateLimit: { points: 1_000, durationMs: 3_600_000 } });
    const th = await call(api.url, "POST", "/v1/threads", {
      key: h.a.key,
      json: {},
      headers: idem("f-thread"),
    });
    const threadId = obj(th.body).id as string;
    const body = { agent: "echo", input: "once" };
    const run = await call(api.url, "POST", `/v1/threads/${threadId}/runs`, {
      key: h.a.key,
      json: body,
      headers: idem("f-run"),
    });
    expect(run.status).toBe(202);

    // FLUSHALL would wipe the shared test Redis for every other test: delete exactly our prefix instead.
    expect(await h.flushRedis()).toBeGreaterThan(0); // rate-limit buckets at least
    const th2 = await call(api.url, "POST", "/v1/threads", {
      key: h.a.key,
      json: {},
      headers: idem("f-thread"),
    });
    const run2 = await call(api.url, "POST", `/v1/threads/${threadId}/runs`, {
      key: h.a.key,
      json: body,
      headers: idem("f-run"),
    });
    expect(th2.body).toEqual(th.body);
    expect(obj(run2.body).id).toBe(obj(run.body).id);
    const bad = await call(api.url, "POST", `/v1/threads/${threadId}/runs`, {
      key: h.a.key,
      json: { ...body, input: "twice" },
      headers: idem("f-run"),
    });
    expect(bad.status).toBe(422);
    const counts = await rowCounts(h.t);
    expect(counts.threads).toBe(1);
    expect(counts.runs).toBe(1);
  });
});
