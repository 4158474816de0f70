/**
 * Token accounting in Postgres (src/state/usage.ts) and the usage/cache
 * routes, against a real database. The routes run in a minimal Fastify app
 * with the real authenticator and the real problem+json mapping.
 */
import Fastify, { type FastifyInstance } from "fastify";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createMemoryCoordination } from "../../src/coord/memory.js";
import type { Coordination } from "../../src/coord/types.js";
import { assertWithinBudget, isOverBudget } from "../../src/state/budgets.js";
import { isCapstanError } from "../../src/errors.js";
import { createAuthenticator } from "../../src/ingress/auth.js";
import { problemFor } from "../../src/ingress/problem.js";
import { cacheRoutes } from "../../src/ingress/routes/cache.js";
import { usageRoutes } from "../../src/ingress/routes/usage.js";
import { silentLogger } from "../../src/logger.js";
import { enqueueRun } from "../../src/state/scheduler.js";
import { createApiKey, ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import {
  readBudgetStatus,
  readUsage,
  recordUsageTx,
  setTenantBudget,
  threadUsage,
  utcDay,
} from "../../src/state/usage.js";
import { createTestDb, type TestDb } from "../support/pg.js";

let t: TestDb;
let tenantA: string;
let tenantB: string;
let keyA: string;
let keyB: string;
let app: FastifyInstance;
let coord: Coordination;

const M1 = "openai:gpt-4o-mini";
const M2 = "anthropic:claude-haiku";

beforeAll(async () => {
  t = await createTestDb();
  tenantA = (await ensureTenant(t.db, "usage-a")).id;
  tenantB = (await ensureTenant(t.db, "usage-b")).id;
  keyA = (await createApiKey(t.db, tenantA)).key;
  keyB = (await createApiKey(t.db, tenantB)).key;

  // Tenant A: two models over three days; one cache hit. Tenant B: one row.
  const rec = (tenantId: string, day: string, model: string, i: number, o: number, extra = {}) =>
    t.db.tx((q) => recordUsageTx(q, { tenantId, day, model, inputTokens: i, outputTokens: o, ...extra }));
  await rec(tenantA, "2025-01-30", M1, 1000, 100, { cachedInputTokens: 400 });
  await rec(tenantA, "2025-01-30", M1, 500, 50);
  await rec(tenantA, "2025-01-31", M1, 2000, 200);
  await rec(tenantA, "2025-01-31", M2, 300, 30);
  await rec(tenantA, "2025-01-31", M1, 0, 0, { cacheHit: true, tokensSaved: 777 });
  await rec(tenantA, "2025-02-01", M2, 10, 1);
  await rec(tenantB, "2025-01-31", M1, 99_999, 9);

  coord = createMemoryCoordination({ events: { maxLen: 100, ttlMs: 60_000 } });
  app = Fastify();
  const auth = createAuthenticator(t.db);
  app.decorateRequest("principal", null);
  app.setErrorHandler((err, req, reply) => {
    const p = problemFor(err, req.id);
    return reply.code(p.status).headers(p.headers).type("application/problem+json").send(p.body);
  });
  await app.register(
    async (v1) => {
      v1.addHook("onRequest", async (req) => {
        req.principal = await auth.authenticate(req.headers.authorization);
      });
      usageRoutes(
        v1,
        { db: t.db },
        { prices: { [M1]: { inputPerMTok: 1, outputPerMTok: 10, cachedInputPerMTok: 0.5 } } },
      );
      cacheRoutes(v1, { coord, logger: silentLogger() });
    },
    { prefix: "/v1" },
  );
  await app.ready();
});

afterAll(async () => {
  await app?.close();
  await coord?.close();
  await t?.drop();
});

const get = async (url: string, key = keyA) => {
  const r = await app.inject({ method: "GET", url, headers: { authorization: `Bearer ${key}` } });
  return { status: r.statusCode, body: r.json<Record<string, unknown>>(), type: r.headers["content-type"] };
};

describe("usage rollup (usage_daily)", () => {
  it("UPSERTs per tenant, day and model; sums per day/model and in total; cache hits count apart", async () => {
    const r = await readUsage(t.db, tenantA, { from: "2025-01-30", to: "2025-01-31" });
    expect(r.rows).toEqual([
      {
        day: "2025-01-30",
        model: M1,
        inputTokens: 1500,
        outputTokens: 150,
        cachedInputTokens: 400,
        llmCalls: 2,
        cacheHits: 0,
        tokensSaved: 0,
      },
      {
        day: "2025-01-31",
        model: M2,
        inputTokens: 300,
        outputTokens: 30,
        cachedInputTokens: 0,
        llmCalls: 1,
        cacheHits: 0,
        tokensSaved: 0,
      },
      {
        day: "2025-01-31",
        model: M1,
        inputTokens: 2000,
        outputTokens: 200,
        cachedInputTokens: 0,
        llmCalls: 1,
        cacheHits: 1,
        tokensSaved: 777,
      },
    ]);
    expect(r.totals).toEqual({
      inputTokens: 3800,
      outputTokens: 380,
      cachedInputTokens: 400,
      llmCalls: 4,
      cacheHits: 1,
      tokensSaved: 777,
      totalTokens: 4180,
    });
  });

  it("is written by the caller's transaction: a rolled-back step records nothing", async () => {
    const tenant = (await ensureTenant(t.db, "usage-rollback")).id;
    await expect(
      t.db.tx(async (q) => {
        await recordUsageTx(q, { tenantId: tenant, model: M1, inputTokens: 5, outputTokens: 5 });
        throw new Error("journal write failed");
      }),
    ).rejects.toThrow("journal write failed");
    const today = utcDay();
    expect((await readUsage(t.db, tenant, { from: today, to: today })).rows).toEqual([]);
    // Without a day: the database's UTC day.
    await t.db.tx((q) => recordUsageTx(q, { tenantId: tenant, model: M1, inputTokens: 5, outputTokens: 6 }));
    const r = await readUsage(t.db, tenant, { from: today, to: today });
    expect(r.totals.totalTokens).toBe(11);
  });

  it("refuses malformed deltas instead of recording garbage", async () => {
    await expect(
      recordUsageTx(t.db, { tenantId: tenantA, model: M1, inputTokens: -1, outputTokens: 0 }),
    ).rejects.toThrow(/inputTokens/);
    await expect(
      recordUsageTx(t.db, { tenantId: tenantA, model: "", inputTokens: 1, outputTokens: 0 }),
    ).rejects.toThrow(/model/);
    await expect(
      recordUsageTx(t.db, {
        tenantId: tenantA,
        model: M1,
        day: "2025-02-30",
        inputTokens: 1,
        outputTokens: 0,
      }),
    ).rejects.toThrow(/day/);
  });

  it("thread usage sums its runs; a foreign thread is not_found", async () => {
    const thread = await createThread(t.db, tenantA);
    for (const [i, o] of [
      [100, 10],
      [200, 20],
    ] as const) {
      const { run } = await enqueueRun(t.db, {
        tenantId: tenantA,
        threadId: thread.id,
        agent: "echo",
        content: "hi",
        maxAttempts: 3,
        defaultMaxPending: 100,
      });
      await t.db.query(
        "UPDATE runs SET input_tokens = $2, output_tokens = $3, cached_input_tokens = $4 WHERE id = $1",
        [run.id, i, o, i / 10],
      );
    }
    expect(await threadUsage(t.db, tenantA, thread.id)).toEqual({
      runs: 2,
      inputTokens: 300,
      outputTokens: 30,
      cachedInputTokens: 30,
    });
    const empty = await createThread(t.db, tenantA);
    expect(await threadUsage(t.db, tenantA, empty.id)).toEqual({
      runs: 0,
      inputTokens: 0,
      outputTokens: 0,
      cachedInputTokens: 0,
    });
    await expect(threadUsage(t.db, tenantB, thread.id)).rejects.toSatisfy((e) =>
      isCapstanError(e, "not_found"),
    );
  });
});

describe("budgets in Postgres", () => {
  it("sets budgets (undefined keeps, null removes) and reads day and month-to-date usage", async () => {
    expect(await readBudgetStatus(t.db, tenantA, "2025-01-31")).toEqual({
      day: "2025-01-31",
      daily: null,
      monthly: null,
      dayUsed: 2530,
      monthUsed: 4180,
    });
    expect(await setTenantBudget(t.db, tenantA, { daily: 3000 })).toEqual({ daily: 3000, monthly: null });
    expect(await setTenantBudget(t.db, tenantA, { monthly: 5000 })).toEqual({ daily: 3000, monthly: 5000 });
    // February: the January days are not in the month.
    expect(await readBudgetStatus(t.db, tenantA, "2025-02-01")).toMatchObject({ dayUsed: 11, monthUsed: 11 });
    expect(await setTenantBudget(t.db, tenantA, { daily: null })).toEqual({ daily: null, monthly: 5000 });
    await expect(setTenantBudget(t.db, tenantA, { daily: -5 })).rejects.toSatisfy((e) =>
      isCapstanError(e, "validation_failed"),
    );
    await expect(
      setTenantBudget(t.db, "00000000-0000-0000-0000-000000000000", { daily: 1 }),
    ).rejects.toSatisfy((e) => isCapstanError(e, "not_found"));
    expect(await readBudgetStatus(t.db, "00000000-0000-0000-0000-000000000000")).toBeNull();
  });

  it("isOverBudget / assertWithinBudget refuse new runs once a budget is used up", async () => {
    const tenant = (await ensureTenant(t.db, "usage-over")).id;
    const at = Date.UTC(2025, 2, 15, 12);
    expect(await isOverBudget(t.db, tenant, at)).toEqual({ over: false });
    await setTenantBudget(t.db, tenant, { daily: 100, monthly: 1_000 });
    await t.db.tx((q) =>
      recordUsageTx(q, { tenantId: tenant, model: M1, day: "2025-03-14", inputTokens: 950, outputTokens: 0 }),
    );
    await t.db.tx((q) =>
      recordUsageTx(q, { tenantId: tenant, model: M1, day: "2025-03-15", inputTokens: 60, outputTokens: 0 }),
    );
    // Day: 60 < 100, month: 1010 ≥ 1000.
    expect(await isOverBudget(t.db, tenant, at)).toEqual({
      over: true,
      period: "month",
      budget: 1_000,
      used: 1_010,
      resetsAt: "2025-04-01T00:00:00.000Z",
    });
    const err: unknown = await assertWithinBudget(t.db, tenant, at).catch((e: unknown) => e);
    expect(isCapstanError(err, "budget_exceeded")).toBe(true);
    const p = problemFor(err, "req-1");
    expect(p.status).toBe(402);
    expect(p.body).toMatchObject({ code: "budget_exceeded", period: "month", budget: 1000, used: 1010 });
    expect(p.body.resets_at).toBe("2025-04-01T00:00:00.000Z");
  });
});

describe("GET /v1/usage", () => {
  it("returns the caller's rows, totals, estimated cost (priced models) and budgets", async () => {
    const r = await get("/v1/usage?from=2025-01-30&to=2025-02-01");
    expect(r.status).toBe(200);
    const data = r.body.data as Record<string, unknown>[];
    expect(data.map((d) => [d.day, d.model, d.total_tokens])).toEqual([
      ["2025-01-30", M1, 1650],
      ["2025-01-31", M2, 330],
      ["2025-01-31", M1, 2200],
      ["2025-02-01", M2, 11],
    ]);
    // M1 on 01-30: (1500 − 400) × 1 + 400 × 0.5 + 150 × 10 = 2800 per million.
    expect(data[0]).toEqual({
      day: "2025-01-30",
      model: M1,
      input_tokens: 1500,
      output_tokens: 150,
      cached_input_tokens: 400,
      total_tokens: 1650,
      llm_calls: 2,
      cache_hits: 0,
      tokens_saved: 0,
      estimated_cost: 0.0028,
    });
    expect(data[1]!.estimated_cost).toBeNull();
    expect(r.body.totals).toEqual({
      input_tokens: 3810,
      output_tokens: 381,
      cached_input_tokens: 400,
      total_tokens: 4191,
      llm_calls: 5,
      cache_hits: 1,
      tokens_saved: 777,
      // 0.0028 + (2000 + 2000) / 1e6
      estimated_cost: 0.0068,
      unpriced_models: [M2],
    });
    expect(r.body).toMatchObject({ from: "2025-01-30", to: "2025-02-01" });
    expect(r.body.budget).toMatchObject({ monthly_token_budget: 5000 });

    // Tenant B sees only its own usage.
    const b = await get("/v1/usage?from=2025-01-01&to=2025-01-31", keyB);
    expect((b.body.totals as Record<string, unknown>).total_tokens).toBe(100_008);
    expect(b.body.data as unknown[]).toHaveLength(1);
  });

  it("defaults to the current month; an empty range is all zeros", async () => {
    const r = await get("/v1/usage");
    expect(r.status).toBe(200);
    const today = utcDay();
    expect(r.body).toMatchObject({ from: `${today.slice(0, 7)}-01`, to: today });
  });

  it("answers 400 problem+json naming the field for bad from/to", async () => {
    const cases: [string, string][] = [
      ["/v1/usage?from=2025-13-01&to=2025-12-31", "query.from"],
      ["/v1/usage?from=2025-01-01&to=yesterday", "query.to"],
      ["/v1/usage?from=2025-02-30", "query.from"],
      ["/v1/usage?from=2025-02-01&to=2025-01-31", "query.from"],
      ["/v1/usage?from=2024-01-01&to=2025-01-01", "query.from"],
      ["/v1/usage?form=2025-01-01", "query.form"],
      ["/v1/usage?from=2025-01-01&from=2025-01-02", "query.from"],
    ];
    for (const [url, field] of cases) {
      const r = await get(url);
      expect(r.status, url).toBe(400);
      expect(r.type).toMatch(/^application\/problem\+json/);
      expect(r.body.code).toBe("validation_failed");
      expect(
        (r.body.fields as { field: string }[]).map((f) => f.field),
        url,
      ).toContain(field);
    }
    // 366 days inclusive is the maximum (2024 is a leap year).
    expect((await get("/v1/usage?from=2024-01-01&to=2024-12-31")).status).toBe(200);
  });

  it("GET /v1/threads/:id/usage sums a thread; foreign or malformed ids are 404", async () => {
    const thread = await createThread(t.db, tenantA);
    const r = await get(`/v1/threads/${thread.id}/usage`);
    expect(r.status).toBe(200);
    expect(r.body).toEqual({
      thread_id: thread.id,
      runs: 0,
      input_tokens: 0,
      output_tokens: 0,
      cached_input_tokens: 0,
      total_tokens: 0,
    });
    expect((await get(`/v1/threads/${thread.id}/usage`, keyB)).status).toBe(404);
    expect((await get(`/v1/threads/nope/usage`)).status).toBe(404);
  });
});

describe("POST /v1/cache/invalidate", () => {
  const post = async (body: unknown) => {
    const r = await app.inject({
      method: "POST",
      url: "/v1/cache/invalidate",
      headers: { authorization: `Bearer ${keyA}`, "content-type": "application/json" },
      payload: JSON.stringify(body),
    });
    return { status: r.statusCode, body: r.json<Record<string, unknown>>() };
  };

  it("invalidates tags for the caller's tenant and validates them", async () => {
    expect(await post({ tags: ["catalog", "order:42", "catalog"] })).toEqual({
      status: 200,
      body: { invalidated: ["catalog", "order:42"] },
    });
    const empty = await post({ tags: [] });
    expect(empty.status).toBe(400);
    expect((empty.body.fields as { field: string }[])[0]!.field).toBe("tags");
    const bad = await post({ tags: ["ok", "x".repeat(129)] });
    expect(bad.status).toBe(400);
    expect((bad.body.fields as { field: string }[])[0]!.field).toBe("tags.1");
    expect((await post({ tags: ["a"], extra: 1 })).status).toBe(400);
  });
});
