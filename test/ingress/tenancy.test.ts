import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { localLexicalEmbedder } from "../../src/agent/embeddings.js";
import type { RunningIngress } from "../../src/ingress/server.js";
import { createApiKey, revokeApiKey } from "../../src/state/tenants.js";
import { call, createHarness, obj, rowCounts, threadAndRun, type Harness } from "./harness.js";

let h: Harness;
let api: RunningIngress;
beforeAll(async () => {
  h = await createHarness();
  api = await h.start({ embedder: localLexicalEmbedder() });
});
afterAll(async () => {
  await h?.close();
});

describe("tenant isolation: another tenant's id is a 404 on every endpoint, and nothing changes", () => {
  it("every endpoint", async () => {
    const { threadId, runId } = await threadAndRun(api.url, h.a.key, "secret");
    const mem = await call(api.url, "PUT", "/v1/memories/ns/k", { key: h.a.key, json: { text: "secret" } });
    expect(mem.status).toBe(201);
    const memoryId = obj(mem.body).id as string;
    const before = await rowCounts(h.t);
    const runBefore = obj((await call(api.url, "GET", `/v1/runs/${runId}`, { key: h.a.key })).body);

    const attempts: [string, string, unknown?][] = [
      ["GET", `/v1/threads/${threadId}`],
      ["GET", `/v1/threads/${threadId}/messages`],
      ["POST", `/v1/threads/${threadId}/runs`, { agent: "echo", input: "mine now" }],
      ["GET", `/v1/runs/${runId}`],
      ["GET", `/v1/runs/${runId}/wait?timeout=1`],
      ["GET", `/v1/runs/${runId}/events`],
      ["GET", `/v1/runs/${runId}/steps`],
      ["POST", `/v1/runs/${runId}/cancel`],
      ["POST", `/v1/runs/${runId}/resume`, { decision: "approve" }],
      ["GET", `/v1/threads/${threadId}/usage`],
      ["GET", `/v1/memories/${memoryId}`],
      ["DELETE", `/v1/memories/${memoryId}`],
      ["GET", "/v1/memories/ns/k"],
      ["DELETE", "/v1/memories/ns/k"],
    ];
    for (const [method, path, json] of attempts) {
      for (const headers of [{}, { "idempotency-key": `foreign-${method}-${path}` }] as Record<
        string,
        string
      >[]) {
        const res = await call(api.url, method, path, { key: h.b.key, headers, ...(json ? { json } : {}) });
        expect(res.status, `${method} ${path}: ${res.text}`).toBe(404);
        expect(obj(res.body).code).toBe("not_found");
        // The answer never carries the other tenant's data.
        expect(res.text).not.toContain("secret");
      }
    }
    expect(await rowCounts(h.t)).toEqual(before);
    expect(obj((await call(api.url, "GET", `/v1/runs/${runId}`, { key: h.a.key })).body)).toEqual(runBefore);
    // Another tenant's memories are never listed or searched either.
    const list = await call(api.url, "GET", "/v1/memories?namespace=ns", { key: h.b.key });
    expect(obj(list.body).data).toEqual([]);
    const found = await call(api.url, "POST", "/v1/memories/search", {
      key: h.b.key,
      json: { namespace: "ns", query: "secret" },
    });
    expect(obj(found.body).data).toEqual([]);
    expect((await call(api.url, "GET", `/v1/memories/${memoryId}`, { key: h.a.key })).status).toBe(200);
    // Foreign and unknown ids are answered identically.
    const unknown = await call(api.url, "GET", "/v1/runs/00000000-0000-4000-8000-000000000000", {
      key: h.b.key,
    });
    const foreign = await call(api.url, "GET", `/v1/runs/${runId}`, { key: h.b.key });
    expect(Object.keys(obj(unknown.body)).sort()).toEqual(Object.keys(obj(foreign.body)).sort());
    expect(obj(unknown.body).title).toBe(obj(foreign.body).title);
  });

  it("idempotency keys are per tenant: the same key in two tenants makes two resources", async () => {
    const headers = { "idempotency-key": "shared-key" };
    const a = await call(api.url, "POST", "/v1/threads", { key: h.a.key, json: {}, headers });
    const b = await call(api.url, "POST", "/v1/threads", { key: h.b.key, json: {}, headers });
    expect(a.status).toBe(201);
    expect(b.status).toBe(201);
    expect(obj(a.body).id).not.toBe(obj(b.body).id);
  });

  it("a revoked key stops working once its cache entry expires (cache off here)", async () => {
    const strict = await h.start({ auth: { cacheTtlMs: 0 } });
    const k = await createApiKey(h.t.db, h.a.id, "short-lived");
    expect((await call(strict.url, "POST", "/v1/threads", { key: k.key, json: {} })).status).toBe(201);
    await revokeApiKey(h.t.db, k.info.id);
    const res = await call(strict.url, "POST", "/v1/threads", { key: k.key, json: {} });
    expect(res.status).toBe(401);
    expect(obj(res.body).code).toBe("unauthorized");
  });

  it("revoking by an ambiguous prefix revokes nothing; by the prefix of one key, that key", async () => {
    const one = await createApiKey(h.t.db, h.a.id, "one");
    const two = await createApiKey(h.t.db, h.b.id, "two");
    // Prefixes are random; force a collision.
    await h.t.db.query("UPDATE api_keys SET prefix = $1 WHERE id = $2", [one.info.prefix, two.info.id]);
    const err = await revokeApiKey(h.t.db, one.info.prefix).catch((e: unknown) => e);
    expect(obj(err).code).toBe("validation_failed");
    const revoked = await h.t.db.query(
      "SELECT count(*)::int AS n FROM api_keys WHERE id = ANY($1) AND revoked_at IS NOT NULL",
      [[one.info.id, two.info.id]],
    );
    expect(revoked.rows[0]).toEqual({ n: 0 });
    await h.t.db.query("UPDATE api_keys SET prefix = 'other' WHERE id = $1", [two.info.id]);
    expect((await revokeApiKey(h.t.db, one.info.prefix)).id).toBe(one.info.id);
    expect((await revokeApiKey(h.t.db, "no-such-prefix").catch((e: unknown) => e)) as object).toMatchObject({
      code: "not_found",
    });
  });
});
