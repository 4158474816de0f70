import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { resolveSettings } from "../../src/config/config.js";
import { call, createHarness, metric, obj, type Harness } from "./harness.js";

let h: Harness;
beforeAll(async () => {
  h = await createHarness();
});
afterAll(async () => {
  await h?.close();
});

const rule = { points: 5, durationMs: 60_000 };

describe("per-API-key rate limit (token bucket in Redis)", () => {
  it("a burst gets RateLimit-* headers, then 429 rate_limited with Retry-After; other keys are unaffected", async () => {
    const api = await h.start({ rateLimit: rule });
    const ten = await h.tenant();
    const remaining: number[] = [];
    for (let i = 0; i < 5; i++) {
      const res = await call(api.url, "GET", "/v1/threads/00000000-0000-4000-8000-000000000000", {
        key: ten.key,
      });
      expect(res.status).toBe(404); // counted like any request
      expect(res.headers.get("ratelimit-limit")).toBe("5");
      expect(Number(res.headers.get("ratelimit-reset"))).toBeGreaterThan(0);
      remaining.push(Number(res.headers.get("ratelimit-remaining")));
    }
    expect(remaining).toEqual([4, 3, 2, 1, 0]);
    const refused = await call(api.url, "POST", "/v1/threads", { key: ten.key, json: {} });
    expect(refused.status).toBe(429);
    expect(obj(refused.body)).toMatchObject({ code: "rate_limited", status: 429 });
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(refused.headers.get("ratelimit-remaining")).toBe("0");
    expect(await metric(api.url, "capstan_rate_limit_rejections_total", '{scope="api_key"}')).toBe(1);
    // Nothing was written by the refused request.
    expect(
      (await h.t.db.query("SELECT count(*) AS n FROM threads WHERE tenant_id = $1", [ten.id])).rows[0]!.n,
    ).toBe(0);

    const other = await h.tenant();
    expect((await call(api.url, "POST", "/v1/threads", { key: other.key, json: {} })).status).toBe(201);
    // Operational endpoints are not limited.
    expect((await call(api.url, "GET", "/healthz")).status).toBe(200);
  });

  it("the limit holds across two ingress instances sharing one Redis", async () => {
    const one = await h.start({ rateLimit: rule, coord: h.openCoord() });
    const two = await h.start({ rateLimit: rule, coord: h.openCoord() });
    const ten = await h.tenant();
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) {
      const base = i % 2 === 0 ? one.url : two.url;
      statuses.push((await call(base, "POST", "/v1/threads", { key: ten.key, json: {} })).status);
    }
    expect(statuses.filter((s) => s === 201)).toHaveLength(5);
    expect(statuses.filter((s) => s === 429)).toHaveLength(5);
    expect(statuses.slice(0, 5)).toEqual([201, 201, 201, 201, 201]);
  });

  it("Redis down, fail-open (default): requests pass, and the failure is counted", async () => {
    const api = await h.start({ rateLimit: rule, coord: h.deadCoord() });
    const ten = await h.tenant();
    for (let i = 0; i < 7; i++) {
      const res = await call(api.url, "POST", "/v1/threads", { key: ten.key, json: {} });
      expect(res.status).toBe(201);
      expect(res.headers.get("ratelimit-limit")).toBeNull();
    }
    expect(await metric(api.url, "capstan_ingress_rate_limiter_errors_total", '{policy="open"}')).toBe(7);
  });

  it("Redis down, fail-closed: 503 redis_unavailable with Retry-After, nothing written", async () => {
    const api = await h.start({ rateLimit: rule, coord: h.deadCoord(), redisFailurePolicy: "closed" });
    const ten = await h.tenant();
    const res = await call(api.url, "POST", "/v1/threads", { key: ten.key, json: {} });
    expect(res.status).toBe(503);
    expect(obj(res.body)).toMatchObject({ code: "redis_unavailable" });
    expect(res.headers.get("retry-after")).toBe("1");
    expect(
      (await h.t.db.query("SELECT count(*) AS n FROM threads WHERE tenant_id = $1", [ten.id])).rows[0]!.n,
    ).toBe(0);
  });

  it("failed key lookups are limited per client address, before the database is asked", async () => {
    const api = await h.start({
      settings: resolveSettings({ flags: { http: { authFailuresPerMinute: 3, trustProxy: "127.0.0.1" } } }),
    });
    const from = (ip: string) => ({ headers: { "x-forwarded-for": ip } });
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) {
      statuses.push(
        (await call(api.url, "POST", "/v1/threads", { key: `bogus-${i}`, json: {}, ...from("10.0.0.1") }))
          .status,
      );
    }
    expect(statuses).toEqual([401, 401, 401]);
    const refused = await call(api.url, "POST", "/v1/threads", {
      key: "bogus-4",
      json: {},
      ...from("10.0.0.1"),
    });
    expect(refused.status).toBe(429);
    expect(obj(refused.body)).toMatchObject({ code: "rate_limited" });
    expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
    expect(await metric(api.url, "capstan_rate_limit_rejections_total", '{scope="auth_failures"}')).toBe(1);
    // Another address is independent, and good keys never count against an address.
    expect(
      (await call(api.url, "POST", "/v1/threads", { key: "bogus-5", json: {}, ...from("10.0.0.2") })).status,
    ).toBe(401);
    // A key seen valid before the lockout keeps working from the locked address, past its cache TTL.
    const known = await h.tenant();
    const strict = await h.start({
      settings: resolveSettings({ flags: { http: { authFailuresPerMinute: 1, trustProxy: "127.0.0.1" } } }),
      auth: { cacheTtlMs: 1 },
    });
    expect(
      (await call(strict.url, "POST", "/v1/threads", { key: known.key, json: {}, ...from("10.0.0.3") }))
        .status,
    ).toBe(201);
    expect(
      (await call(strict.url, "POST", "/v1/threads", { key: "bogus-6", json: {}, ...from("10.0.0.3") }))
        .status,
    ).toBe(401);
    expect(
      (await call(strict.url, "POST", "/v1/threads", { key: "bogus-7", json: {}, ...from("10.0.0.3") }))
        .status,
    ).toBe(429);
    expect(
      (await call(strict.url, "POST", "/v1/threads", { key: known.key, json: {}, ...from("10.0.0.3") }))
        .status,
    ).toBe(201);
    const ten = await h.tenant();
    for (let i = 0; i < 5; i++) {
      expect(
        (await call(api.url, "POST", "/v1/threads", { key: ten.key, json: {}, ...from("10.0.0.2") })).status,
      ).toBe(201);
    }
  });
});
