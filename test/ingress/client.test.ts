import { createServer, type Server } from "node:net";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { CapstanApiError, createClient, type RunStreamEvent } from "../../src/client/index.js";
import type { RunningIngress } from "../../src/ingress/server.js";
import { until } from "../support/pg.js";
import { createHarness, FakeWorker, metric, type Harness } from "./harness.js";

let h: Harness;
let api: RunningIngress;
beforeEach(async () => {
  h = await createHarness();
  api = await h.start();
});
afterEach(async () => {
  await h?.close();
});

const ev = (type: string, extra: Record<string, unknown> = {}) => ({ type, data: { ...extra } });

/** A port where nothing listens (bound, then closed). */
async function deadUrl(): Promise<string> {
  const srv: Server = createServer();
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", () => r()));
  const addr = srv.address();
  await new Promise<void>((r) => srv.close(() => r()));
  return `http://127.0.0.1:${typeof addr === "object" && addr ? addr.port : 1}`;
}

describe("typed client (capstan/client)", () => {
  it("covers the API: threads, runs, wait, steps, messages, cancel, resume", async () => {
    const c = createClient({ baseUrl: api.url, apiKey: h.a.key });
    const thread = await c.threads.create({ metadata: { user: "u" } });
    expect(thread).toMatchObject({ status: "idle", metadata: { user: "u" } });
    expect(await c.threads.get(thread.id)).toEqual(thread);

    const run = await c.runs.create(thread.id, {
      agent: "echo",
      input: { role: "user", content: [{ type: "text", text: "hi" }] },
    });
    expect(run).toMatchObject({ thread_id: thread.id, status: "queued" });
    expect(await c.runs.get(run.id)).toMatchObject({ id: run.id });
    const msgs = await c.threads.messages(thread.id, { limit: 10 });
    expect(msgs.data.map((m) => m.content)).toEqual([[{ type: "text", text: "hi" }]]);
    expect((await c.runs.steps(run.id)).data).toEqual([]);

    const w = await FakeWorker.claim(h);
    const { suspendRun } = await import("../../src/state/scheduler.js");
    await suspendRun(h.t.db, w.run.lease, { reason: "approval" });
    expect((await c.runs.wait(run.id, { timeout: 5 })).status).toBe("waiting");
    expect((await c.runs.resume(run.id, { decision: "reject", input: "no" })).status).toBe("queued");
    expect((await c.runs.cancel(run.id)).status).toBe("cancelled");
  });

  it("throws CapstanApiError with status, code, detail and fields", async () => {
    const c = createClient({ baseUrl: api.url, apiKey: h.a.key });
    const thread = await c.threads.create();
    const err = await c.runs.create(thread.id, { agent: "ghost", input: "x" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CapstanApiError);
    const e = err as CapstanApiError;
    expect(e.status).toBe(422);
    expect(e.code).toBe("unknown_agent");
    expect(e.fields.map((f) => f.field)).toEqual(["agent"]);
    expect(e.detail).toMatch(/ghost/);
    expect(e.requestId).toBeTruthy();

    const nf = await c.runs
      .get("00000000-0000-4000-8000-000000000000")
      .catch((x: unknown) => x as CapstanApiError);
    expect(nf).toMatchObject({ status: 404, code: "not_found" });
    const bad = createClient({ baseUrl: api.url, apiKey: "cap_wrong" });
    await expect(bad.threads.create()).rejects.toMatchObject({ status: 401, code: "unauthorized" });
    const nobody = createClient({ baseUrl: await deadUrl(), apiKey: h.a.key });
    await expect(nobody.threads.create()).rejects.toMatchObject({ status: 0, code: "connection_failed" });
  });

  it("rotates to the next base URL when one cannot be reached; retried POSTs carry one idempotency key", async () => {
    const c = createClient({ baseUrls: [await deadUrl(), api.url], apiKey: h.a.key });
    const thread = await c.threads.create();
    expect(thread.id).toBeTruthy();
    const run = await c.runs.create(
      thread.id,
      { agent: "echo", input: "x" },
      { idempotencyKey: "client-key" },
    );
    const same = await c.runs.create(
      thread.id,
      { agent: "echo", input: "x" },
      { idempotencyKey: "client-key" },
    );
    expect(same.id).toBe(run.id);
  });

  it("runs.stream reconnects after the server drops the connection and after a replica shuts down, resuming with Last-Event-ID", async () => {
    const second = await h.start({ coord: h.openCoord() });
    const c = createClient({
      baseUrls: [api.url, second.url],
      apiKey: h.a.key,
      stream: { initialDelayMs: 20 },
    });
    const thread = await c.threads.create();
    const run = await c.runs.create(thread.id, { agent: "echo", input: "go" });
    const w = await FakeWorker.claim(h);
    const expected: string[] = [];
    const publishStep = async (i: number) => {
      expected.push(...(await w.coarse([ev("step.completed", { i })])).map((e) => String(e.id)));
      expected.push(...(await w.deltas([`t${i}`])));
    };

    const seen: RunStreamEvent[] = [];
    const consuming = (async () => {
      for await (const e of c.runs.stream(run.id)) seen.push(e);
    })();

    await publishStep(0);
    await until(() => seen.length === 2, { what: "the first events" });
    // 1) A hard drop: every connection of the first replica is cut (it keeps listening).
    api.app.server.closeAllConnections();
    await publishStep(1);
    await until(() => seen.length === 4, { what: "events after the reconnect" });
    // 2) A graceful shutdown of the first replica: the stream ends with a retry hint, the
    //    reconnect to it is refused, and the client moves on to the second replica.
    await api.close();
    await publishStep(2);
    await until(() => seen.length === 6, { what: "events from the second replica" });
    expect(await metric(second.url, "capstan_sse_clients")).toBe(1);
    expected.push(...(await w.finish()).map((e) => String(e.id)));
    await consuming;

    expect(seen.map((e) => e.id)).toEqual(expected);
    expect(seen.at(-1)).toMatchObject({ event: "run.succeeded", data: { status: "succeeded" } });
    expect(seen[1]).toMatchObject({ event: "message.delta", data: { text: "t0" } });

    // A finished run: streaming from past its end returns at once (204), from the start replays all.
    const again: string[] = [];
    for await (const e of c.runs.stream(run.id, { after: expected.at(-1)! })) again.push(e.id);
    expect(again).toEqual([]);
    for await (const e of c.runs.stream(run.id)) again.push(e.id);
    expect(again).toEqual(expected);
  });

  it("runs.stream gives up after bounded retries when no replica answers", async () => {
    const c = createClient({
      baseUrl: await deadUrl(),
      apiKey: h.a.key,
      stream: { maxRetries: 2, initialDelayMs: 5, maxDelayMs: 10 },
    });
    const it = c.runs.stream("00000000-0000-4000-8000-000000000000");
    await expect(it.next()).rejects.toMatchObject({ code: "connection_failed", status: 0 });
  });

  it("runs.stream fails at once on a 4xx (no retry loop)", async () => {
    const c = createClient({ baseUrl: api.url, apiKey: h.a.key });
    await expect(c.runs.stream("00000000-0000-4000-8000-000000000000").next()).rejects.toMatchObject({
      status: 404,
      code: "not_found",
    });
    await expect(
      c.runs.stream("00000000-0000-4000-8000-000000000000", { after: "x" }).next(),
    ).rejects.toMatchObject({
      status: 400,
      fields: [{ field: "Last-Event-ID" }],
    });
  });
});
