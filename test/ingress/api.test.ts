import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { appendLlmStep, recordToolIntent, recordToolOutcome } from "../../src/state/journal.js";
import { suspendRun } from "../../src/state/scheduler.js";
import type { RunningIngress } from "../../src/ingress/server.js";
import { createMetrics } from "../../src/observability/metrics.js";
import { until } from "../support/pg.js";
import { call, createHarness, FakeWorker, metric, obj, threadAndRun, type Harness } from "./harness.js";

let h: Harness;
let api: RunningIngress;
// A database per test: claims are global, so a test must not see another's queued runs.
beforeEach(async () => {
  h = await createHarness();
  api = await h.start();
});
afterEach(async () => {
  await h?.close();
});

describe("ingress API: the happy paths of docs/http-api.md", () => {
  it("threads: create (201, Location), get with status, list messages with paging", async () => {
    const created = await call(api.url, "POST", "/v1/threads", {
      key: h.a.key,
      json: { metadata: { user: "u1" } },
    });
    expect(created.status).toBe(201);
    const thread = obj(created.body);
    expect(thread).toMatchObject({ status: "idle", metadata: { user: "u1" } });
    expect(Object.keys(thread).sort()).toEqual(["created_at", "id", "metadata", "status"]);
    expect(created.headers.get("location")).toBe(`/v1/threads/${String(thread.id)}`);
    expect(created.headers.get("content-type")).toMatch(/^application\/json/);

    // No body at all is an empty create.
    const bare = await call(api.url, "POST", "/v1/threads", { key: h.a.key });
    expect(bare.status).toBe(201);

    const got = await call(api.url, "GET", `/v1/threads/${String(thread.id)}`, { key: h.a.key });
    expect(got.status).toBe(200);
    expect(got.body).toEqual(thread);

    // Three runs: the first is the head, its input joins the history at once; the others queue.
    for (const input of [
      "one",
      { role: "user", content: "two" },
      { role: "user", content: [{ type: "text", text: "three" }] },
    ]) {
      const r = await call(api.url, "POST", `/v1/threads/${String(thread.id)}/runs`, {
        key: h.a.key,
        json: { agent: "echo", input },
      });
      expect(r.status).toBe(202);
    }
    const busy = await call(api.url, "GET", `/v1/threads/${String(thread.id)}`, { key: h.a.key });
    expect(obj(busy.body).status).toBe("busy");

    const page = await call(api.url, "GET", `/v1/threads/${String(thread.id)}/messages?limit=1`, {
      key: h.a.key,
    });
    expect(page.status).toBe(200);
    const p = obj(page.body) as { data: Record<string, unknown>[]; next_after: number | null };
    expect(p.data).toHaveLength(1);
    expect(p.data[0]).toMatchObject({ seq: 1, role: "user", content: "one" });
    expect(Object.keys(p.data[0]!).sort()).toEqual(["content", "created_at", "role", "run_id", "seq"]);
    expect(p.next_after).toBe(1);
    const rest = await call(api.url, "GET", `/v1/threads/${String(thread.id)}/messages?after=1&limit=200`, {
      key: h.a.key,
    });
    expect(obj(rest.body)).toEqual({ data: [], next_after: null });
  });

  it("runs: create (202 + Location), get, steps, wait, cancel (events published), resume", async () => {
    const { threadId, runId } = await threadAndRun(api.url, h.a.key, "hi");
    const got = await call(api.url, "GET", `/v1/runs/${runId}`, { key: h.a.key });
    expect(got.status).toBe(200);
    const run = obj(got.body);
    expect(run).toMatchObject({
      id: runId,
      thread_id: threadId,
      agent: "echo",
      status: "queued",
      multitask: "enqueue",
      metadata: {},
      attempts: 0,
      usage: { input_tokens: 0, output_tokens: 0 },
      error: null,
      wait: null,
      started_at: null,
      finished_at: null,
    });
    expect(Object.keys(run).sort()).toEqual(
      [
        "agent",
        "attempts",
        "created_at",
        "error",
        "finished_at",
        "id",
        "metadata",
        "multitask",
        "started_at",
        "status",
        "thread_id",
        "usage",
        "wait",
      ].sort(),
    );

    // A worker journals an LLM step and a tool step, then parks the run for approval.
    const w = await FakeWorker.claim(h);
    expect(w.run.id).toBe(runId);
    await appendLlmStep(h.t.db, w.run.lease, {
      stepNo: 0,
      request: { messages: 1 },
      response: { text: "", toolCalls: [{ toolCallId: "c1", toolName: "refund", input: { amount: 5 } }] },
      usage: { inputTokens: 10, outputTokens: 3 },
      startedAt: new Date(),
    });
    await recordToolIntent(h.t.db, w.run.lease, {
      stepNo: 1,
      toolName: "refund",
      toolCallId: "c1",
      effect: "idempotent",
      idempotencyKey: `${runId}:1`,
      args: { amount: 5 },
    });
    await recordToolOutcome(h.t.db, w.run.lease, { stepNo: 1, status: "completed", result: { ok: true } });
    const steps = await call(api.url, "GET", `/v1/runs/${runId}/steps`, { key: h.a.key });
    expect(steps.status).toBe(200);
    const data = (obj(steps.body).data as Record<string, unknown>[]).map((s) => ({ ...s }));
    expect(data).toHaveLength(2);
    expect(data[0]).toMatchObject({
      step_no: 0,
      kind: "llm",
      status: "completed",
      usage: { input_tokens: 10, output_tokens: 3, cached_input_tokens: null },
      result: { text: "" },
    });
    expect(data[1]).toMatchObject({
      step_no: 1,
      kind: "tool",
      status: "completed",
      tool_name: "refund",
      tool_call_id: "c1",
      effect: "idempotent",
      args: { amount: 5 },
      result: { ok: true },
      usage: null,
      error: null,
    });

    await suspendRun(h.t.db, w.run.lease, { reason: "approval", step_no: 2 });
    const waited = await call(api.url, "GET", `/v1/runs/${runId}/wait?timeout=5`, { key: h.a.key });
    expect(obj(waited.body)).toMatchObject({ status: "waiting", wait: { reason: "approval", step_no: 2 } });
    expect(obj((await call(api.url, "GET", `/v1/threads/${threadId}`, { key: h.a.key })).body).status).toBe(
      "waiting",
    );

    const resumed = await call(api.url, "POST", `/v1/runs/${runId}/resume`, {
      key: h.a.key,
      json: { decision: "approve", input: "looks fine" },
    });
    expect(resumed.status).toBe(200);
    expect(obj(resumed.body).status).toBe("queued");
    const row = await h.t.db.query<{ resume: unknown }>("SELECT resume FROM runs WHERE id = $1", [runId]);
    expect(row.rows[0]!.resume).toMatchObject({ decision: "approve", input: "looks fine" });

    const cancelled = await call(api.url, "POST", `/v1/runs/${runId}/cancel`, { key: h.a.key });
    expect(cancelled.status).toBe(200);
    expect(obj(cancelled.body)).toMatchObject({ status: "cancelled", error: { code: "cancelled" } });
    // The persisted terminal event reached the live stream too.
    const live = await h.coord.events.read(runId, "0", { count: 100 });
    expect(live.map((e) => e.type)).toContain("run.cancelled");
  });

  it("multitask interrupt publishes the cancelled run's events; reject answers 409 thread_busy", async () => {
    const { threadId, runId } = await threadAndRun(api.url, h.a.key);
    const rejected = await call(api.url, "POST", `/v1/threads/${threadId}/runs`, {
      key: h.a.key,
      json: { agent: "echo", input: "x", multitask: "reject" },
    });
    expect(rejected.status).toBe(409);
    expect(obj(rejected.body)).toMatchObject({ code: "thread_busy", active_run_id: runId });

    const interrupt = await call(api.url, "POST", `/v1/threads/${threadId}/runs`, {
      key: h.a.key,
      json: { agent: "echo", input: "y", multitask: "interrupt" },
    });
    expect(interrupt.status).toBe(202);
    const live = await h.coord.events.read(runId, "0", { count: 100 });
    expect(live.map((e) => e.type)).toEqual(["run.cancelled"]);
    expect(obj((await call(api.url, "GET", `/v1/runs/${runId}`, { key: h.a.key })).body).status).toBe(
      "cancelled",
    );
  });

  it("wait returns as soon as the run finishes (NOTIFY, not at the timeout), or the current run at the timeout", async () => {
    // No slow poll within the test's run: an answer before the wait's timeout can only come from
    // the notification.
    const server = await h.start({ waitPollMs: 600_000 });
    const { runId } = await threadAndRun(server.url, h.a.key);
    // The run stays queued: the wait watches (it did not answer at once), then answers at its timeout.
    const timingOut = call(server.url, "GET", `/v1/runs/${runId}/wait?timeout=3`, { key: h.a.key });
    await until(async () => (await metric(server.url, "capstan_ingress_run_watchers")) === 1, {
      what: "the wait to watch",
    });
    const timedOut = await timingOut;
    expect(obj(timedOut.body).status).toBe("queued");
    expect(await metric(server.url, "capstan_ingress_run_watchers")).toBe(0);

    const w = await FakeWorker.claim(h);
    // A timeout past the test's own (60 s): only the notification can answer in time.
    const pending = call(server.url, "GET", `/v1/runs/${runId}/wait?timeout=60`, { key: h.a.key });
    await until(async () => (await metric(server.url, "capstan_ingress_run_watchers")) === 1, {
      what: "the wait to watch",
    });
    await w.finish();
    const done = await pending;
    expect(obj(done.body).status).toBe("succeeded");
  }, 45_000);

  it("operational endpoints: healthz, readyz, metrics, openapi.json", async () => {
    expect((await call(api.url, "GET", "/healthz")).status).toBe(200);
    const ready = await call(api.url, "GET", "/readyz");
    expect(ready.status).toBe(200);
    // The same body as the worker's ops server (src/observability/ops-server.ts readinessBody).
    expect(obj(ready.body)).toEqual({
      status: "ready",
      checks: {
        postgres: { ok: true },
        schema: { ok: true },
        coordination: { ok: true },
        agents: { ok: true },
      },
    });
    const metrics = await call(api.url, "GET", "/metrics");
    expect(metrics.status).toBe(200);
    expect(metrics.text).toContain("capstan_http_request_duration_seconds");
    expect(metrics.text).toContain("capstan_ingress_run_watchers");

    const doc = await call(api.url, "GET", "/openapi.json");
    expect(doc.status).toBe(200);
    const spec = obj(doc.body);
    expect(spec.openapi).toBe("3.1.0");
    const paths = obj(spec.paths);
    for (const p of [
      "/v1/threads",
      "/v1/threads/{id}",
      "/v1/threads/{id}/messages",
      "/v1/threads/{id}/runs",
      "/v1/runs/{id}",
      "/v1/runs/{id}/wait",
      "/v1/runs/{id}/events",
      "/v1/runs/{id}/steps",
      "/v1/runs/{id}/cancel",
      "/v1/runs/{id}/resume",
    ]) {
      expect(paths[p], p).toBeDefined();
    }
    const schemas = obj(obj(spec.components).schemas);
    expect(obj(schemas.CreateRunRequest).required).toEqual(["agent", "input"]);
    expect(obj(obj(schemas.Run).properties).usage).toBeDefined();
    // Every $ref resolves inside the document.
    const refs = [...doc.text.matchAll(/"\$ref":"#\/components\/schemas\/([^"]+)"/g)].map((m) => m[1]!);
    for (const r of refs) expect(schemas[r], r).toBeDefined();
  });

  it("serves the process metrics it is given; two apps may share them", async () => {
    const shared = createMetrics();
    const one = await h.start({ metrics: shared });
    const two = await h.start({ metrics: shared });
    await call(one.url, "GET", "/healthz");
    await call(two.url, "GET", "/healthz");
    const text = (await call(two.url, "GET", "/metrics")).text;
    expect(text).toMatch(/capstan_http_request_duration_seconds_count\{[^}]*route="\/healthz"[^}]*\} 2/);
    expect(text).toContain("capstan_ingress_run_watchers 0");
  });

  it("readyz is 503 when coordination is unreachable or no agents are loaded", async () => {
    const down = await h.start({ coord: h.deadCoord() });
    const r1 = await call(down.url, "GET", "/readyz");
    expect(r1.status).toBe(503);
    expect(obj(r1.body).status).toBe("not_ready");
    expect(obj(obj(r1.body).checks).coordination).toMatchObject({ ok: false });
    const noAgents = await h.start({ agentNames: () => [] });
    const r2 = await call(noAgents.url, "GET", "/readyz");
    expect(r2.status).toBe(503);
    expect(obj(obj(r2.body).checks).agents).toMatchObject({ ok: false });
  });
});
