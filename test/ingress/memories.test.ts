/**
 * The memory API (/v1/memories) through the real ingress, on real PostgreSQL
 * (pgvector where installed, else the exact fallback) and real Redis, with the
 * deterministic local embedder.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { localLexicalEmbedder, type Embedder } from "../../src/agent/embeddings.js";
import type { RunningIngress } from "../../src/ingress/server.js";
import { until } from "../support/pg.js";
import { call, createHarness, obj, rowCounts, type ApiAnswer, type Harness, type Json } from "./harness.js";

const base = localLexicalEmbedder();
let embedCalls = 0;
/** The lexical embedder, counting the texts it is asked to embed. */
const embedder: Embedder = {
  id: base.id,
  dims: base.dims,
  embed(texts, signal) {
    embedCalls += texts.length;
    return base.embed(texts, signal);
  },
};

let h: Harness;
let api: RunningIngress;

beforeAll(async () => {
  h = await createHarness();
  api = await h.start({ embedder });
});
afterAll(async () => {
  await h?.close();
});

const enc = encodeURIComponent;
const put = (ns: string, key: string, json: unknown, apiKey = h.a.key) =>
  call(api.url, "PUT", `/v1/memories/${enc(ns)}/${enc(key)}`, { key: apiKey, json });
const create = (json: unknown, apiKey = h.a.key, headers: Record<string, string> = {}) =>
  call(api.url, "POST", "/v1/memories", { key: apiKey, json, headers });
const search = (json: unknown, apiKey = h.a.key) =>
  call(api.url, "POST", "/v1/memories/search", { key: apiKey, json });
const data = (r: ApiAnswer): Json[] => obj(r.body).data as Json[];

function cosineDistance(a: readonly number[], b: readonly number[]): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  a.forEach((x, i) => {
    const y = b[i] ?? 0;
    dot += x * y;
    na += x * x;
    nb += y * y;
  });
  return 1 - dot / Math.sqrt(na * nb);
}

async function memoryCount(): Promise<number> {
  return (await rowCounts(h.t)).memories!;
}

describe("memories: put, get, list, delete", () => {
  it("PUT by key creates (201) then updates (200) in place; GET by id and by key", async () => {
    const created = await put("user:1", "fav colour", {
      text: "my favourite colour is blue",
      metadata: { kind: "preference" },
    });
    expect(created.status, created.text).toBe(201);
    const m = obj(created.body);
    expect(m).toMatchObject({
      namespace: "user:1",
      key: "fav colour",
      text: "my favourite colour is blue",
      metadata: { kind: "preference" },
      embedding_model: embedder.id,
      expires_at: null,
    });
    expect(created.headers.get("location")).toBe(`/v1/memories/${String(m.id)}`);
    // The server embedded the text with its embedder and stored the model id.
    const row = await h.t.db.query<{ embedding_model: string; dims: number }>(
      "SELECT embedding_model, dims FROM memories WHERE id = $1",
      [m.id],
    );
    expect(row.rows[0]).toEqual({ embedding_model: embedder.id, dims: embedder.dims });

    const updated = await put("user:1", "fav colour", { text: "my favourite colour is green" });
    expect(updated.status, updated.text).toBe(200);
    expect(obj(updated.body)).toMatchObject({
      id: m.id,
      created_at: m.created_at,
      text: "my favourite colour is green",
      metadata: {},
    });

    const byId = await call(api.url, "GET", `/v1/memories/${String(m.id)}`, { key: h.a.key });
    expect(byId.status).toBe(200);
    expect(byId.body).toEqual(updated.body);
    const byKey = await call(api.url, "GET", `/v1/memories/user%3A1/fav%20colour`, { key: h.a.key });
    expect(byKey.status).toBe(200);
    expect(byKey.body).toEqual(updated.body);
  });

  it("POST creates keyless memories; the list pages through a namespace in creation order", async () => {
    const ids: string[] = [];
    for (const text of ["first note", "second note", "third note"]) {
      const r = await create({ namespace: "notes", text });
      expect(r.status, r.text).toBe(201);
      expect(obj(r.body).key).toBeNull();
      ids.push(obj(r.body).id as string);
    }
    const page1 = await call(api.url, "GET", "/v1/memories?namespace=notes&limit=2", { key: h.a.key });
    expect(page1.status, page1.text).toBe(200);
    expect(data(page1).map((d) => d.id)).toEqual(ids.slice(0, 2));
    const cursor = obj(page1.body).next_cursor as string;
    expect(typeof cursor).toBe("string");
    const page2 = await call(api.url, "GET", `/v1/memories?namespace=notes&limit=2&cursor=${enc(cursor)}`, {
      key: h.a.key,
    });
    expect(data(page2).map((d) => d.id)).toEqual(ids.slice(2));
    expect(obj(page2.body).next_cursor).toBeNull();
    // Another namespace is another list.
    const other = await call(api.url, "GET", "/v1/memories?namespace=elsewhere", { key: h.a.key });
    expect(obj(other.body)).toEqual({ data: [], next_cursor: null });
  });

  it("DELETE by id and by key: 204, then 404", async () => {
    const r = await create({ namespace: "to-delete", text: "short-lived" });
    const id = obj(r.body).id as string;
    expect((await call(api.url, "DELETE", `/v1/memories/${id}`, { key: h.a.key })).status).toBe(204);
    const again = await call(api.url, "DELETE", `/v1/memories/${id}`, { key: h.a.key });
    expect(again.status).toBe(404);
    expect(obj(again.body).code).toBe("not_found");
    expect((await call(api.url, "GET", `/v1/memories/${id}`, { key: h.a.key })).status).toBe(404);

    expect((await put("to-delete", "k", { text: "keyed" })).status).toBe(201);
    expect((await call(api.url, "DELETE", "/v1/memories/to-delete/k", { key: h.a.key })).status).toBe(204);
    expect((await call(api.url, "GET", "/v1/memories/to-delete/k", { key: h.a.key })).status).toBe(404);
    expect((await call(api.url, "DELETE", "/v1/memories/to-delete/k", { key: h.a.key })).status).toBe(404);
    // Unknown and malformed ids are the same 404.
    for (const bad of ["00000000-0000-4000-8000-000000000000", "not-a-uuid"]) {
      const res = await call(api.url, "DELETE", `/v1/memories/${bad}`, { key: h.a.key });
      expect(res.status).toBe(404);
    }
  });

  it("POST with an Idempotency-Key: a retry answers the first memory without embedding again", async () => {
    const body = { namespace: "idem", text: "remember me once", metadata: { n: 1 } };
    const headers = { "idempotency-key": "mem-1" };
    const first = await create(body, h.a.key, headers);
    expect(first.status).toBe(201);
    const calls = embedCalls;
    const before = await memoryCount();
    const retry = await create(body, h.a.key, headers);
    expect(retry.status).toBe(201);
    expect(retry.headers.get("idempotent-replayed")).toBe("true");
    expect(retry.headers.get("location")).toBe(`/v1/memories/${String(obj(first.body).id)}`);
    expect(retry.body).toEqual(first.body);
    expect(embedCalls).toBe(calls);
    expect(await memoryCount()).toBe(before);

    const changed = await create({ ...body, text: "something else" }, h.a.key, headers);
    expect(changed.status).toBe(422);
    expect(obj(changed.body).code).toBe("idempotency_key_reused");
    expect(embedCalls).toBe(calls);
    expect(await memoryCount()).toBe(before);
  });
});

describe("memories: search", () => {
  const texts = [
    "the cat sat on the mat",
    "dogs bark loudly at night",
    "quantum physics lecture notes",
    "a cat and a kitten play on a mat",
    "night trains to the mountains",
  ];
  const ids = new Map<string, string>();

  beforeAll(async () => {
    for (const [i, text] of texts.entries()) {
      const r = await put("search", `m${i}`, { text, metadata: { kind: i % 2 === 0 ? "even" : "odd" } });
      expect(r.status, r.text).toBe(201);
      ids.set(text, obj(r.body).id as string);
    }
    // Same texts in another namespace and in another tenant: never returned below.
    await put("search-other", "m0", { text: texts[0] });
    await put("search", "m0", { text: texts[0] }, h.b.key);
  });

  it("returns the nearest memories first, with their distances", async () => {
    const query = "cat sat mat";
    const r = await search({ namespace: "search", query });
    expect(r.status, r.text).toBe(200);
    const got = data(r);
    // Expected order: exact cosine distances of the same embeddings.
    const [q] = await base.embed([query]);
    const vecs = await base.embed(texts);
    const expected = texts
      .map((t, i) => ({ id: ids.get(t)!, d: cosineDistance(q!, vecs[i]!) }))
      .sort((a, b) => a.d - b.d);
    expect(got.map((m) => m.id)).toEqual(expected.map((e) => e.id));
    got.forEach((m, i) => expect(m.distance as number).toBeCloseTo(expected[i]!.d, 4));
    expect(got[0]).toMatchObject({
      namespace: "search",
      key: "m0",
      text: "the cat sat on the mat",
      metadata: { kind: "even" },
      expires_at: null,
    });
    expect(Object.keys(got[0]!).sort()).toEqual(
      ["created_at", "distance", "expires_at", "id", "key", "metadata", "namespace", "text"].sort(),
    );
  });

  it("honours k, filter and max_distance", async () => {
    const top2 = await search({ namespace: "search", query: "cat sat mat", k: 2 });
    expect(data(top2).map((m) => m.text)).toEqual([
      "the cat sat on the mat",
      "a cat and a kitten play on a mat",
    ]);
    const odd = await search({ namespace: "search", query: "cat sat mat", filter: { kind: "odd" } });
    expect(data(odd).length).toBeGreaterThan(0);
    expect(data(odd).every((m) => obj(m.metadata).kind === "odd")).toBe(true);
    const near = await search({ namespace: "search", query: "the cat sat on the mat", max_distance: 0.01 });
    expect(data(near).map((m) => m.text)).toEqual(["the cat sat on the mat"]);
    const none = await search({ namespace: "nothing-here", query: "cat" });
    expect(obj(none.body)).toEqual({ data: [] });
  });
});

describe("memories: TTL", () => {
  it("an expired memory is gone from get, list and search; expires_at is reported", async () => {
    const r = await put("ttl", "brief", { text: "ephemeral fact about tea", ttl_seconds: 1 });
    expect(r.status).toBe(201);
    const m = obj(r.body);
    const ttlMs = Date.parse(m.expires_at as string) - Date.parse(m.created_at as string);
    expect(ttlMs).toBeGreaterThanOrEqual(900);
    expect(ttlMs).toBeLessThanOrEqual(1100);
    const lasting = await put("ttl", "lasting", { text: "lasting fact about tea", ttl_seconds: 3600 });
    expect(lasting.status).toBe(201);

    await until(
      async () =>
        (await call(api.url, "GET", `/v1/memories/${String(m.id)}`, { key: h.a.key })).status === 404,
      { timeoutMs: 5_000, intervalMs: 100, what: "memory to expire" },
    );
    expect((await call(api.url, "GET", "/v1/memories/ttl/brief", { key: h.a.key })).status).toBe(404);
    const list = await call(api.url, "GET", "/v1/memories?namespace=ttl", { key: h.a.key });
    expect(data(list).map((d) => d.key)).toEqual(["lasting"]);
    const found = await search({ namespace: "ttl", query: "fact about tea" });
    expect(data(found).map((d) => d.key)).toEqual(["lasting"]);

    // Writing the key again creates it afresh (201), without expiry now.
    const again = await put("ttl", "brief", { text: "ephemeral fact about tea" });
    expect(again.status).toBe(201);
    expect(obj(again.body).expires_at).toBeNull();
  });
});

describe("memories: tenant isolation", () => {
  it("another tenant's memory is a 404, is never listed or searched, and its key is another memory", async () => {
    const mine = await put("shared-ns", "secret", { text: "the vault code is 1234 secret" });
    const id = obj(mine.body).id as string;
    const before = await memoryCount();

    for (const [method, path] of [
      ["GET", `/v1/memories/${id}`],
      ["DELETE", `/v1/memories/${id}`],
      ["GET", "/v1/memories/shared-ns/secret"],
      ["DELETE", "/v1/memories/shared-ns/secret"],
    ] as const) {
      const res = await call(api.url, method, path, { key: h.b.key });
      expect(res.status, `${method} ${path}`).toBe(404);
      expect(res.text).not.toContain("1234");
    }
    const list = await call(api.url, "GET", "/v1/memories?namespace=shared-ns", { key: h.b.key });
    expect(data(list)).toEqual([]);
    const found = await search({ namespace: "shared-ns", query: "vault code secret", k: 100 }, h.b.key);
    expect(data(found)).toEqual([]);
    expect(await memoryCount()).toBe(before);

    // Tenant B's PUT on the same namespace and key makes B's own memory.
    const theirs = await put("shared-ns", "secret", { text: "tenant b's own note" }, h.b.key);
    expect(theirs.status).toBe(201);
    expect(obj(theirs.body).id).not.toBe(id);
    const still = await call(api.url, "GET", `/v1/memories/${id}`, { key: h.a.key });
    expect(obj(still.body).text).toBe("the vault code is 1234 secret");
    const bSearch = await search({ namespace: "shared-ns", query: "vault code secret" }, h.b.key);
    expect(data(bSearch).map((d) => d.text)).toEqual(["tenant b's own note"]);
  });
});

describe("memories: bad input is a 400 naming the field, and nothing is written or embedded", () => {
  const long = "x".repeat(32 * 1024 + 1);
  // 11,000 × 3 bytes: under the byte limit in characters, over it in UTF-8.
  const wide = "€".repeat(11_000);
  const cases: { name: string; method: string; path: string; json?: unknown; field: string }[] = [
    {
      name: "text too long",
      method: "POST",
      path: "/v1/memories",
      json: { namespace: "n", text: long },
      field: "text",
    },
    {
      name: "text too long in UTF-8",
      method: "PUT",
      path: "/v1/memories/n/k",
      json: { text: wide },
      field: "text",
    },
    { name: "empty text", method: "PUT", path: "/v1/memories/n/k", json: { text: "" }, field: "text" },
    {
      name: "text not a string",
      method: "POST",
      path: "/v1/memories",
      json: { namespace: "n", text: 5 },
      field: "text",
    },
    { name: "missing text", method: "PUT", path: "/v1/memories/n/k", json: {}, field: "text" },
    {
      name: "NUL in text",
      method: "PUT",
      path: "/v1/memories/n/k",
      json: { text: "a\u0000b" },
      field: "text",
    },
    {
      name: "k > 100",
      method: "POST",
      path: "/v1/memories/search",
      json: { namespace: "n", query: "q", k: 101 },
      field: "k",
    },
    {
      name: "k = 0",
      method: "POST",
      path: "/v1/memories/search",
      json: { namespace: "n", query: "q", k: 0 },
      field: "k",
    },
    {
      name: "k not an integer",
      method: "POST",
      path: "/v1/memories/search",
      json: { namespace: "n", query: "q", k: 2.5 },
      field: "k",
    },
    {
      name: "query too long",
      method: "POST",
      path: "/v1/memories/search",
      json: { namespace: "n", query: long },
      field: "query",
    },
    {
      name: "max_distance > 2",
      method: "POST",
      path: "/v1/memories/search",
      json: { namespace: "n", query: "q", max_distance: 3 },
      field: "max_distance",
    },
    {
      name: "filter not an object",
      method: "POST",
      path: "/v1/memories/search",
      json: { namespace: "n", query: "q", filter: [1] },
      field: "filter",
    },
    {
      name: "namespace too long (path)",
      method: "PUT",
      path: `/v1/memories/${"n".repeat(257)}/k`,
      json: { text: "t" },
      field: "namespace",
    },
    {
      name: "control character in namespace (path)",
      method: "PUT",
      path: "/v1/memories/a%0Ab/k",
      json: { text: "t" },
      field: "namespace",
    },
    {
      name: "key too long (path)",
      method: "PUT",
      path: `/v1/memories/n/${"k".repeat(257)}`,
      json: { text: "t" },
      field: "key",
    },
    {
      name: "empty namespace (body)",
      method: "POST",
      path: "/v1/memories",
      json: { namespace: "", text: "t" },
      field: "namespace",
    },
    {
      name: "missing namespace (search)",
      method: "POST",
      path: "/v1/memories/search",
      json: { query: "q" },
      field: "namespace",
    },
    {
      name: "control character in namespace (search)",
      method: "POST",
      path: "/v1/memories/search",
      json: { namespace: "a\u0007", query: "q" },
      field: "namespace",
    },
    {
      name: "ttl 0",
      method: "PUT",
      path: "/v1/memories/n/k",
      json: { text: "t", ttl_seconds: 0 },
      field: "ttl_seconds",
    },
    {
      name: "negative ttl",
      method: "POST",
      path: "/v1/memories",
      json: { namespace: "n", text: "t", ttl_seconds: -5 },
      field: "ttl_seconds",
    },
    {
      name: "fractional ttl",
      method: "PUT",
      path: "/v1/memories/n/k",
      json: { text: "t", ttl_seconds: 1.5 },
      field: "ttl_seconds",
    },
    {
      name: "ttl as a string",
      method: "PUT",
      path: "/v1/memories/n/k",
      json: { text: "t", ttl_seconds: "60" },
      field: "ttl_seconds",
    },
    {
      name: "ttl over 10 years",
      method: "PUT",
      path: "/v1/memories/n/k",
      json: { text: "t", ttl_seconds: 400_000_000 },
      field: "ttl_seconds",
    },
    {
      name: "metadata too large",
      method: "PUT",
      path: "/v1/memories/n/k",
      json: { text: "t", metadata: { a: "y".repeat(9000) } },
      field: "metadata",
    },
    {
      name: "metadata not an object",
      method: "POST",
      path: "/v1/memories",
      json: { namespace: "n", text: "t", metadata: "m" },
      field: "metadata",
    },
    {
      name: "unknown field",
      method: "PUT",
      path: "/v1/memories/n/k",
      json: { text: "t", key: "other" },
      field: "key",
    },
    {
      name: "key in a POST body",
      method: "POST",
      path: "/v1/memories",
      json: { namespace: "n", text: "t", key: "k" },
      field: "key",
    },
    { name: "list without namespace", method: "GET", path: "/v1/memories", field: "query.namespace" },
    { name: "list limit 0", method: "GET", path: "/v1/memories?namespace=n&limit=0", field: "query.limit" },
    {
      name: "list limit too large",
      method: "GET",
      path: "/v1/memories?namespace=n&limit=201",
      field: "query.limit",
    },
    {
      name: "list bad cursor",
      method: "GET",
      path: "/v1/memories?namespace=n&cursor=bm9wZQ",
      field: "query.cursor",
    },
  ];

  let baseline: Record<string, number>;
  let calls: number;
  beforeAll(async () => {
    baseline = await rowCounts(h.t);
    calls = embedCalls;
  });

  for (const c of cases) {
    it(c.name, async () => {
      const res = await call(api.url, c.method, c.path, {
        key: h.a.key,
        ...(c.json !== undefined ? { json: c.json } : {}),
      });
      expect(res.status, res.text).toBe(400);
      expect(res.headers.get("content-type")).toMatch(/^application\/problem\+json/);
      const p = obj(res.body);
      expect(p.code).toBe("validation_failed");
      const fields = (p.fields ?? []) as { field: string }[];
      expect(
        fields.map((f) => f.field),
        res.text,
      ).toContain(c.field);
      expect(await rowCounts(h.t)).toEqual(baseline);
      expect(embedCalls).toBe(calls);
    });
  }
});

describe("memories: server without an embedder, or with a failing one", () => {
  it("answers 501 not_implemented on every memory route", async () => {
    const bare = await h.start();
    const id = "00000000-0000-4000-8000-000000000000";
    for (const [method, path, json] of [
      ["PUT", "/v1/memories/n/k", { text: "t" }],
      ["POST", "/v1/memories", { namespace: "n", text: "t" }],
      ["POST", "/v1/memories/search", { namespace: "n", query: "q" }],
      ["GET", "/v1/memories?namespace=n"],
      ["GET", `/v1/memories/${id}`],
      ["DELETE", `/v1/memories/${id}`],
      ["GET", "/v1/memories/n/k"],
      ["DELETE", "/v1/memories/n/k"],
    ] as const) {
      const res = await call(bare.url, method, path, { key: h.a.key, ...(json ? { json } : {}) });
      expect(res.status, `${method} ${path}`).toBe(501);
      expect(res.headers.get("content-type")).toMatch(/^application\/problem\+json/);
      expect(obj(res.body)).toMatchObject({ code: "not_implemented", status: 501 });
      expect(String(obj(res.body).detail)).toMatch(/embedding model/);
    }
    // Authentication still comes first.
    expect((await call(bare.url, "GET", "/v1/memories?namespace=n")).status).toBe(401);
  });

  it("an embedding provider failure is a 503 to retry, and nothing is written", async () => {
    const broken = await h.start({
      embedder: {
        id: "broken:model@4",
        dims: 4,
        embed: () => Promise.reject(new Error("connect ECONNREFUSED 10.0.0.1:443 (api key sk-...)")),
      },
    });
    const before = await memoryCount();
    const res = await call(broken.url, "PUT", "/v1/memories/n/k", { key: h.a.key, json: { text: "t" } });
    expect(res.status).toBe(503);
    expect(obj(res.body).code).toBe("server_busy");
    expect(res.headers.get("retry-after")).toBe("1");
    expect(res.text).not.toContain("sk-");
    expect(await memoryCount()).toBe(before);
  });
});

describe("memories: OpenAPI", () => {
  it("documents every memory route with its schemas", async () => {
    const doc = await call(api.url, "GET", "/openapi.json");
    const spec = obj(doc.body);
    const paths = obj(spec.paths);
    const schemas = obj(obj(spec.components).schemas);
    expect(Object.keys(obj(paths["/v1/memories"])).sort()).toEqual(["get", "post"]);
    expect(Object.keys(obj(paths["/v1/memories/search"]))).toEqual(["post"]);
    expect(Object.keys(obj(paths["/v1/memories/{id}"])).sort()).toEqual(["delete", "get"]);
    expect(Object.keys(obj(paths["/v1/memories/{namespace}/{key}"])).sort()).toEqual([
      "delete",
      "get",
      "put",
    ]);
    expect(obj(schemas.PutMemoryRequest).required).toEqual(["text"]);
    expect(obj(schemas.CreateMemoryRequest).required).toEqual(["namespace", "text"]);
    expect(obj(schemas.SearchMemoriesRequest).required).toEqual(["namespace", "query"]);
    expect(obj(obj(obj(schemas.SearchMemoriesRequest).properties).k).maximum).toBe(100);
    expect(schemas.Memory).toBeDefined();
    expect(schemas.MemoryPage).toBeDefined();
    expect(schemas.MemorySearchResult).toBeDefined();
    const post = obj(obj(paths["/v1/memories"]).post);
    expect(obj(post.responses)["501"]).toBeDefined();
    expect((post.parameters as Json[]).map((p) => p.name)).toContain("Idempotency-Key");
  });
});
