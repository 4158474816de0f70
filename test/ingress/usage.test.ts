/**
 * Usage, budgets and cache invalidation through the real ingress
 * (buildIngress), on real PostgreSQL and real Redis. test/cost covers the
 * accounting itself; this covers the wiring: routes registered, the price
 * table passed through, budgets refusing runs at the HTTP boundary, and the
 * OpenAPI document describing all of it.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { tool } from "../../src/agent/define.js";
import type { ToolDefinition } from "../../src/agent/types.js";
import { createToolCache, type CacheableTool } from "../../src/cost/cache.js";
import { normalizeToolCache } from "../../src/cost/cache-config.js";
import type { RunningIngress } from "../../src/ingress/server.js";
import { silentLogger } from "../../src/logger.js";
import { recordUsageTx, setTenantBudget, utcDay } from "../../src/state/usage.js";
import { appendLlmStep } from "../../src/state/journal.js";
import { call, createHarness, FakeWorker, obj, rowCounts, type Harness, type Json } from "./harness.js";

const M1 = "openai:gpt-4o-mini";
const M2 = "anthropic:claude-haiku";

let h: Harness;
let api: RunningIngress;

beforeAll(async () => {
  h = await createHarness();
  api = await h.start({ prices: { [M1]: { inputPerMTok: 1, outputPerMTok: 10 } } });
});
afterAll(async () => {
  await h?.close();
});

const record = (tenantId: string, day: string | undefined, model: string, input: number, output: number) =>
  h.t.db.tx((q) =>
    recordUsageTx(q, {
      tenantId,
      ...(day ? { day } : {}),
      model,
      inputTokens: input,
      outputTokens: output,
    }),
  );

describe("GET /v1/usage and /v1/threads/:id/usage through buildIngress", () => {
  it("reports the caller's usage with estimated cost from the configured price table", async () => {
    const t = await h.tenant();
    const other = await h.tenant();
    await record(t.id, "2025-03-01", M1, 1_000_000, 100_000);
    await record(t.id, "2025-03-02", M2, 10, 1);
    await record(other.id, "2025-03-01", M1, 5, 5);

    const r = await call(api.url, "GET", "/v1/usage?from=2025-03-01&to=2025-03-31", { key: t.key });
    expect(r.status, r.text).toBe(200);
    const body = obj(r.body);
    expect(body).toMatchObject({ from: "2025-03-01", to: "2025-03-31" });
    const rows = body.data as Json[];
    expect(rows.map((x) => [x.day, x.model, x.total_tokens, x.estimated_cost])).toEqual([
      ["2025-03-01", M1, 1_100_000, 2],
      ["2025-03-02", M2, 11, null],
    ]);
    expect(obj(body.totals)).toMatchObject({
      total_tokens: 1_100_011,
      estimated_cost: 2,
      unpriced_models: [M2],
    });
    expect(obj(body.budget)).toEqual({
      daily_token_budget: null,
      monthly_token_budget: null,
      day: utcDay(),
      day_used: 0,
      month_used: 0,
    });

    // Without a price table there is no cost at all.
    const plain = await h.start();
    const p = await call(plain.url, "GET", "/v1/usage?from=2025-03-01&to=2025-03-31", { key: t.key });
    expect((obj(p.body).data as Json[])[0]).not.toHaveProperty("estimated_cost");
    expect(obj(p.body).totals).not.toHaveProperty("estimated_cost");
  });

  it("sums a thread's runs; another tenant's thread is a 404", async () => {
    const th = await call(api.url, "POST", "/v1/threads", { key: h.a.key, json: {} });
    const threadId = obj(th.body).id as string;
    const run = await call(api.url, "POST", `/v1/threads/${threadId}/runs`, {
      key: h.a.key,
      json: { agent: "echo", input: "count me" },
    });
    await h.t.db.query(
      "UPDATE runs SET input_tokens = 120, output_tokens = 30, cached_input_tokens = 20 WHERE id = $1",
      [obj(run.body).id],
    );
    const u = await call(api.url, "GET", `/v1/threads/${threadId}/usage`, { key: h.a.key });
    expect(u.status, u.text).toBe(200);
    expect(u.body).toEqual({
      thread_id: threadId,
      runs: 1,
      input_tokens: 120,
      output_tokens: 30,
      cached_input_tokens: 20,
      total_tokens: 150,
    });
    const foreign = await call(api.url, "GET", `/v1/threads/${threadId}/usage`, { key: h.b.key });
    expect(foreign.status).toBe(404);
    expect(obj(foreign.body).code).toBe("not_found");
  });
});

describe("POST /v1/cache/invalidate through buildIngress", () => {
  it("invalidates a worker's cached pure-tool results for the caller's tenant only", async () => {
    const calls = { n: 0 };
    const def: ToolDefinition & CacheableTool = {
      ...tool({
        description: "Look up an order",
        input: z.object({ id: z.number() }),
        effect: "pure",
        run: ({ id }) => {
          calls.n++;
          return { id, status: "shipped" };
        },
      }),
      cache: normalizeToolCache(
        { ttlMs: 60_000, tags: (a: { id: number }) => [`order:${a.id}`] },
        "pure",
        "tool()",
      )!,
    };
    // The worker side: another process on the same Redis.
    const workerCache = createToolCache({ cache: h.openCoord().cache, logger: silentLogger() });
    const hit = async (tenantId: string): Promise<boolean> => {
      const l = await workerCache.lookup({ tenantId, toolName: "lookup", tool: def, args: { id: 1 } });
      expect(l.enabled).toBe(true);
      if (l.hit) return true;
      await l.store({ id: 1, status: "shipped" });
      return false;
    };
    expect([await hit(h.a.id), await hit(h.b.id)]).toEqual([false, false]);
    expect([await hit(h.a.id), await hit(h.b.id)]).toEqual([true, true]);

    const r = await call(api.url, "POST", "/v1/cache/invalidate", {
      key: h.a.key,
      json: { tags: ["order:1", "order:1"] },
    });
    expect(r.status, r.text).toBe(200);
    expect(r.body).toEqual({ invalidated: ["order:1"] });
    expect([await hit(h.a.id), await hit(h.b.id)]).toEqual([false, true]);

    const bad = await call(api.url, "POST", "/v1/cache/invalidate", {
      key: h.a.key,
      json: { tags: "order:1" },
    });
    expect(bad.status).toBe(400);
    expect((obj(bad.body).fields as Json[]).map((f) => f.field)).toContain("tags");
  });
});

describe("budgets at run creation", () => {
  it("a spent daily budget refuses new runs with 402 budget_exceeded; a keyed retry of an earlier run still answers it", async () => {
    const t = await h.tenant();
    const th = await call(api.url, "POST", "/v1/threads", { key: t.key, json: {} });
    const threadId = obj(th.body).id as string;
    const path = `/v1/threads/${threadId}/runs`;
    const body = { agent: "echo", input: "before the budget ran out" };
    const first = await call(api.url, "POST", path, {
      key: t.key,
      json: body,
      headers: { "idempotency-key": "run-1" },
    });
    expect(first.status, first.text).toBe(202);

    await setTenantBudget(h.t.db, t.id, { daily: 10 });
    await record(t.id, undefined, M1, 8, 5);
    const before = await rowCounts(h.t);

    for (const headers of [{ "idempotency-key": "run-2" }, {}] as Record<string, string>[]) {
      const refused = await call(api.url, "POST", path, {
        key: t.key,
        json: { agent: "echo", input: "after" },
        headers,
      });
      expect(refused.status, refused.text).toBe(402);
      expect(refused.headers.get("content-type")).toMatch(/^application\/problem\+json/);
      // Not a 429: nothing suggests retrying soon.
      expect(refused.headers.get("retry-after")).toBeNull();
      const tomorrow = new Date(Date.parse(`${utcDay()}T00:00:00Z`) + 86_400_000).toISOString();
      expect(obj(refused.body)).toMatchObject({
        type: "urn:capstan:error:budget_exceeded",
        status: 402,
        code: "budget_exceeded",
        period: "day",
        budget: 10,
        used: 13,
        resets_at: tomorrow,
      });
    }
    expect(await rowCounts(h.t)).toEqual(before);

    // The earlier request, retried with its key: its run, not a 402.
    const retry = await call(api.url, "POST", path, {
      key: t.key,
      json: body,
      headers: { "idempotency-key": "run-1" },
    });
    expect([200, 202]).toContain(retry.status);
    expect(obj(retry.body).id).toBe(obj(first.body).id);
    expect(retry.headers.get("idempotent-replayed")).toBe("true");
    expect(await rowCounts(h.t)).toEqual(before);

    const usage = await call(api.url, "GET", "/v1/usage", { key: t.key });
    expect(obj(obj(usage.body).budget)).toMatchObject({ daily_token_budget: 10, day_used: 13 });

    // Other tenants are unaffected; lifting the budget admits runs again.
    const other = await call(api.url, "POST", "/v1/threads", { key: h.b.key, json: {} });
    expect(
      (
        await call(api.url, "POST", `/v1/threads/${String(obj(other.body).id)}/runs`, {
          key: h.b.key,
          json: { agent: "echo", input: "fine" },
        })
      ).status,
    ).toBe(202);
    await setTenantBudget(h.t.db, t.id, { daily: null });
    const again = await call(api.url, "POST", path, {
      key: t.key,
      json: { agent: "echo", input: "after" },
      headers: { "idempotency-key": "run-2" },
    });
    expect(again.status, again.text).toBe(202);
  });
});

describe("a run's usage and steps: cached input tokens, estimated cost, cache hits", () => {
  it("GET /v1/runs/:id carries cached_input_tokens and the cost; /steps the model and cache outcome", async () => {
    const t = await h.tenant();
    const th = await call(api.url, "POST", "/v1/threads", { key: t.key, json: {} });
    const created = await call(api.url, "POST", `/v1/threads/${String(obj(th.body).id)}/runs`, {
      key: t.key,
      json: { agent: "echo", input: "price me" },
    });
    expect(created.status, created.text).toBe(202);
    const runId = obj(created.body).id as string;
    // Before any call: no tokens, no cost; every run answer carries the cost when prices are set.
    expect(obj(created.body).usage).toEqual({
      input_tokens: 0,
      output_tokens: 0,
      cached_input_tokens: 0,
      estimated_cost: 0,
    });

    // A worker journals a call (1,000,000 in of which 400,000 cached, 100,000 out) and a
    // response-cache hit that saved 1,500 tokens. Other tenants' queued runs may come first.
    let w = await FakeWorker.claim(h);
    while (w.run.id !== runId) w = await FakeWorker.claim(h);
    const step = { model: M1, response: { text: "ok", toolCalls: [], finishReason: "stop" } };
    await appendLlmStep(h.t.db, w.run.lease, {
      ...step,
      stepNo: 0,
      request: { messages: 1, tools: [] },
      usage: { inputTokens: 1_000_000, outputTokens: 100_000, cachedInputTokens: 400_000 },
      startedAt: new Date(),
    });
    await appendLlmStep(h.t.db, w.run.lease, {
      ...step,
      stepNo: 1,
      request: { messages: 3, tools: [], cache: "hit" },
      usage: { inputTokens: 0, outputTokens: 0 },
      cache: { hit: true, tokensSaved: 1_500 },
      startedAt: new Date(),
    });
    await w.finish();

    // Price of M1: 1 per M input (cached input at the input price: no cached price set), 10 per M output.
    const r = await call(api.url, "GET", `/v1/runs/${runId}`, { key: t.key });
    expect(r.status, r.text).toBe(200);
    expect(obj(r.body).usage).toEqual({
      input_tokens: 1_000_000,
      output_tokens: 100_000,
      cached_input_tokens: 400_000,
      estimated_cost: 2,
    });
    const waited = await call(api.url, "GET", `/v1/runs/${runId}/wait?timeout=1`, { key: t.key });
    expect(obj(obj(waited.body).usage).estimated_cost).toBe(2);

    const steps = await call(api.url, "GET", `/v1/runs/${runId}/steps`, { key: t.key });
    expect(steps.status, steps.text).toBe(200);
    const data = obj(steps.body).data as Json[];
    expect(data.map((s) => [s.step_no, s.model, s.cache])).toEqual([
      [0, M1, { hit: false, tokens_saved: 0 }],
      [1, M1, { hit: true, tokens_saved: 1_500 }],
    ]);
    expect(data[0]!.usage).toEqual({
      input_tokens: 1_000_000,
      output_tokens: 100_000,
      cached_input_tokens: 400_000,
    });

    // Without a price table: no cost field at all; with a model that has no price: null.
    const plain = await h.start();
    const p = await call(plain.url, "GET", `/v1/runs/${runId}`, { key: t.key });
    expect(obj(p.body).usage).toEqual({
      input_tokens: 1_000_000,
      output_tokens: 100_000,
      cached_input_tokens: 400_000,
    });
    // Cancel answers carry it too (computed inside the cancel's transaction).
    const th2 = await call(api.url, "POST", "/v1/threads", { key: t.key, json: {} });
    const queued = await call(api.url, "POST", `/v1/threads/${String(obj(th2.body).id)}/runs`, {
      key: t.key,
      json: { agent: "echo", input: "never mind" },
    });
    const cancelled = await call(api.url, "POST", `/v1/runs/${String(obj(queued.body).id)}/cancel`, {
      key: t.key,
      json: {},
      headers: { "idempotency-key": "cancel-priced" },
    });
    expect(cancelled.status, cancelled.text).toBe(200);
    expect(obj(obj(cancelled.body).usage).estimated_cost).toBe(0);

    const otherPrices = await h.start({ prices: { [M2]: { inputPerMTok: 3, outputPerMTok: 15 } } });
    const o = await call(otherPrices.url, "GET", `/v1/runs/${runId}`, { key: t.key });
    expect(obj(obj(o.body).usage).estimated_cost).toBeNull();
  });
});

describe("OpenAPI", () => {
  it("documents usage, cache invalidation and the 402 budget problem", async () => {
    const doc = await call(api.url, "GET", "/openapi.json");
    const spec = obj(doc.body);
    const paths = obj(spec.paths);
    const schemas = obj(obj(spec.components).schemas);
    const op = (path: string, method: string) => obj(obj(paths[path])[method]);
    expect(obj(op("/v1/usage", "get").responses)["200"]).toBeDefined();
    expect((op("/v1/usage", "get").parameters as Json[]).map((p) => p.name)).toEqual(["from", "to"]);
    expect(op("/v1/threads/{id}/usage", "get").responses).toBeDefined();
    expect(obj(schemas.InvalidateCacheRequest).required).toEqual(["tags"]);
    expect(obj(obj(schemas.UsageReport).properties).budget).toBeDefined();
    expect(obj(schemas.ThreadUsage).required).toContain("total_tokens");

    const created = obj(op("/v1/threads/{id}/runs", "post").responses);
    expect(JSON.stringify(created["402"])).toContain("#/components/schemas/BudgetProblem");
    expect(JSON.stringify(created["402"])).toContain("budget_exceeded");
    expect(obj(obj(schemas.BudgetProblem).properties).resets_at).toBeDefined();

    // Every $ref resolves, and every documented operation is a real route.
    const refs = [...doc.text.matchAll(/"\$ref":"#\/components\/schemas\/([^"]+)"/g)].map((m) => m[1]!);
    for (const r of refs) expect(schemas[r], r).toBeDefined();
    for (const [path, ops] of Object.entries(paths)) {
      for (const method of Object.keys(obj(ops))) {
        const url = path.replace(/\{(\w+)\}/g, ":$1");
        expect(api.app.hasRoute({ method: method.toUpperCase(), url }), `${method} ${path}`).toBe(true);
      }
    }
  });
});
