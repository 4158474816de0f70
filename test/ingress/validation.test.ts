import { connect } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { localLexicalEmbedder } from "../../src/agent/embeddings.js";
import type { RunningIngress } from "../../src/ingress/server.js";
import { revokeApiKey, createApiKey, updateTenantLimits } from "../../src/state/tenants.js";
import { call, createHarness, obj, rowCounts, type Harness } from "./harness.js";

let h: Harness;
let api: RunningIngress;
let threadId: string;
let runId: string;
let revokedKey: string;
let baseline: Record<string, number>;

beforeAll(async () => {
  h = await createHarness();
  api = await h.start({ embedder: localLexicalEmbedder() });
  const th = await call(api.url, "POST", "/v1/threads", { key: h.a.key, json: {} });
  threadId = obj(th.body).id as string;
  const run = await call(api.url, "POST", `/v1/threads/${threadId}/runs`, {
    key: h.a.key,
    json: { agent: "echo", input: "hi" },
  });
  runId = obj(run.body).id as string;
  const k = await createApiKey(h.t.db, h.a.id, "to revoke");
  await revokeApiKey(h.t.db, k.info.id);
  revokedKey = k.key;
  baseline = await rowCounts(h.t);
});
afterAll(async () => {
  await h?.close();
});

interface Case {
  name: string;
  method: string;
  path: () => string;
  key?: () => string | undefined;
  json?: unknown;
  raw?: string | Uint8Array;
  headers?: Record<string, string>;
  status: number;
  code: string;
  field?: string;
}

const big = "x".repeat(100_001);
const many = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, i]));
const runPath = () => `/v1/threads/${threadId}/runs`;

const cases: Case[] = [
  {
    name: "no Authorization header",
    method: "GET",
    path: () => `/v1/threads/${threadId}`,
    key: () => undefined,
    status: 401,
    code: "unauthorized",
  },
  {
    name: "not a Bearer header",
    method: "GET",
    path: () => `/v1/threads/${threadId}`,
    key: () => undefined,
    headers: { authorization: "Basic Zm9vOmJhcg==" },
    status: 401,
    code: "unauthorized",
  },
  {
    name: "unknown API key",
    method: "GET",
    path: () => `/v1/threads/${threadId}`,
    key: () => "cap_nope",
    status: 401,
    code: "unauthorized",
  },
  {
    name: "revoked API key",
    method: "POST",
    path: () => "/v1/threads",
    key: () => revokedKey,
    json: {},
    status: 401,
    code: "unauthorized",
  },
  {
    name: "malformed JSON",
    method: "POST",
    path: () => "/v1/threads",
    raw: '{"metadata": {',
    headers: { "content-type": "application/json" },
    status: 400,
    code: "validation_failed",
    field: "body",
  },
  {
    name: "JSON with __proto__",
    method: "POST",
    path: runPath,
    raw: '{"agent":"echo","input":"x","__proto__":{"a":1}}',
    headers: { "content-type": "application/json" },
    status: 400,
    code: "validation_failed",
    field: "body",
  },
  {
    name: "body is not an object",
    method: "POST",
    path: runPath,
    json: ["echo"],
    status: 400,
    code: "validation_failed",
    field: "body",
  },
  {
    name: "wrong type: agent",
    method: "POST",
    path: runPath,
    json: { agent: 5, input: "x" },
    status: 400,
    code: "validation_failed",
    field: "agent",
  },
  {
    name: "wrong type: input",
    method: "POST",
    path: runPath,
    json: { agent: "echo", input: 42 },
    status: 400,
    code: "validation_failed",
    field: "input",
  },
  {
    name: "missing input",
    method: "POST",
    path: runPath,
    json: { agent: "echo" },
    status: 400,
    code: "validation_failed",
    field: "input",
  },
  {
    name: "wrong role",
    method: "POST",
    path: runPath,
    json: { agent: "echo", input: { role: "system", content: "x" } },
    status: 400,
    code: "validation_failed",
    field: "input.role",
  },
  {
    name: "bad content part",
    method: "POST",
    path: runPath,
    json: { agent: "echo", input: { role: "user", content: [{ type: "image", url: "u" }] } },
    status: 400,
    code: "validation_failed",
    field: "input.content.0.type",
  },
  {
    name: "message too long",
    method: "POST",
    path: runPath,
    json: { agent: "echo", input: big },
    status: 400,
    code: "validation_failed",
    field: "input",
  },
  {
    name: "parts too long in total",
    method: "POST",
    path: runPath,
    json: {
      agent: "echo",
      input: {
        role: "user",
        content: [
          { type: "text", text: big.slice(1000) },
          { type: "text", text: big.slice(99_000) },
        ],
      },
    },
    status: 400,
    code: "validation_failed",
    field: "input.content",
  },
  {
    name: "unknown field",
    method: "POST",
    path: runPath,
    json: { agent: "echo", input: "x", agnet: "echo" },
    status: 400,
    code: "validation_failed",
    field: "agnet",
  },
  {
    name: "unknown multitask",
    method: "POST",
    path: runPath,
    json: { agent: "echo", input: "x", multitask: "queue" },
    status: 400,
    code: "validation_failed",
    field: "multitask",
  },
  {
    name: "metadata: too many keys",
    method: "POST",
    path: () => "/v1/threads",
    json: { metadata: many },
    status: 400,
    code: "validation_failed",
    field: "metadata",
  },
  {
    name: "metadata: too large",
    method: "POST",
    path: runPath,
    json: { agent: "echo", input: "x", metadata: { a: "y".repeat(9_000) } },
    status: 400,
    code: "validation_failed",
    field: "metadata",
  },
  {
    name: "metadata: not an object",
    method: "POST",
    path: () => "/v1/threads",
    json: { metadata: [1] },
    status: 400,
    code: "validation_failed",
    field: "metadata",
  },
  {
    name: "unknown agent",
    method: "POST",
    path: runPath,
    json: { agent: "nobody", input: "x" },
    status: 422,
    code: "unknown_agent",
    field: "agent",
  },
  {
    name: "body over the size limit",
    method: "POST",
    path: runPath,
    raw: JSON.stringify({ agent: "echo", input: "z".repeat(1_100_000) }),
    headers: { "content-type": "application/json" },
    status: 413,
    code: "payload_too_large",
  },
  {
    name: "wrong content type",
    method: "POST",
    path: () => "/v1/threads",
    raw: "metadata=1",
    headers: { "content-type": "text/plain" },
    status: 415,
    code: "unsupported_media_type",
  },
  {
    name: "form content type",
    method: "POST",
    path: runPath,
    raw: "agent=echo",
    headers: { "content-type": "application/x-www-form-urlencoded" },
    status: 415,
    code: "unsupported_media_type",
  },
  {
    name: "negative limit",
    method: "GET",
    path: () => `/v1/threads/${threadId}/messages?limit=-1`,
    status: 400,
    code: "validation_failed",
    field: "query.limit",
  },
  {
    name: "zero limit",
    method: "GET",
    path: () => `/v1/threads/${threadId}/messages?limit=0`,
    status: 400,
    code: "validation_failed",
    field: "query.limit",
  },
  {
    name: "oversized limit",
    method: "GET",
    path: () => `/v1/threads/${threadId}/messages?limit=201`,
    status: 400,
    code: "validation_failed",
    field: "query.limit",
  },
  {
    name: "non-numeric limit",
    method: "GET",
    path: () => `/v1/threads/${threadId}/messages?limit=ten`,
    status: 400,
    code: "validation_failed",
    field: "query.limit",
  },
  {
    name: "negative after",
    method: "GET",
    path: () => `/v1/threads/${threadId}/messages?after=-5`,
    status: 400,
    code: "validation_failed",
    field: "query.after",
  },
  {
    name: "wait timeout too long",
    method: "GET",
    path: () => `/v1/runs/${runId}/wait?timeout=61`,
    status: 400,
    code: "validation_failed",
    field: "query.timeout",
  },
  {
    name: "invalid Last-Event-ID",
    method: "GET",
    path: () => `/v1/runs/${runId}/events`,
    headers: { "last-event-id": "abc" },
    status: 400,
    code: "validation_failed",
    field: "Last-Event-ID",
  },
  {
    name: "Last-Event-ID with three parts",
    method: "GET",
    path: () => `/v1/runs/${runId}/events`,
    headers: { "last-event-id": "1.2.3" },
    status: 400,
    code: "validation_failed",
    field: "Last-Event-ID",
  },
  {
    name: "negative Last-Event-ID",
    method: "GET",
    path: () => `/v1/runs/${runId}/events`,
    headers: { "last-event-id": "-1" },
    status: 400,
    code: "validation_failed",
    field: "Last-Event-ID",
  },
  {
    name: "invalid ?after=",
    method: "GET",
    path: () => `/v1/runs/${runId}/events?after=01`,
    status: 400,
    code: "validation_failed",
    field: "query.after",
  },
  {
    name: "resume: bad decision",
    method: "POST",
    path: () => `/v1/runs/${runId}/resume`,
    json: { decision: "maybe" },
    status: 400,
    code: "validation_failed",
    field: "decision",
  },
  {
    name: "cancel with a body field",
    method: "POST",
    path: () => `/v1/runs/${runId}/cancel`,
    json: { force: true },
    status: 400,
    code: "validation_failed",
    field: "force",
  },
  {
    name: "Idempotency-Key too long",
    method: "POST",
    path: () => "/v1/threads",
    json: {},
    headers: { "idempotency-key": "k".repeat(256) },
    status: 400,
    code: "validation_failed",
    field: "Idempotency-Key",
  },
  {
    name: "malformed thread id",
    method: "GET",
    path: () => "/v1/threads/not-a-uuid",
    status: 404,
    code: "not_found",
  },
  {
    name: "malformed run id (SQL-ish)",
    method: "GET",
    path: () => "/v1/runs/1'%20OR%20'1'='1",
    status: 404,
    code: "not_found",
  },
  {
    name: "unknown thread id",
    method: "POST",
    path: () => "/v1/threads/00000000-0000-4000-8000-000000000000/runs",
    json: { agent: "echo", input: "x" },
    status: 404,
    code: "not_found",
  },
  {
    name: "memory: text too long",
    method: "POST",
    path: () => "/v1/memories",
    json: { namespace: "n", text: "x".repeat(32 * 1024 + 1) },
    status: 400,
    code: "validation_failed",
    field: "text",
  },
  {
    name: "memory: bad namespace in the path",
    method: "PUT",
    path: () => `/v1/memories/${"n".repeat(257)}/k`,
    json: { text: "t" },
    status: 400,
    code: "validation_failed",
    field: "namespace",
  },
  {
    name: "memory: bad ttl",
    method: "PUT",
    path: () => "/v1/memories/n/k",
    json: { text: "t", ttl_seconds: 0 },
    status: 400,
    code: "validation_failed",
    field: "ttl_seconds",
  },
  {
    name: "memory search: k > 100",
    method: "POST",
    path: () => "/v1/memories/search",
    json: { namespace: "n", query: "q", k: 101 },
    status: 400,
    code: "validation_failed",
    field: "k",
  },
  {
    name: "memory list: no namespace",
    method: "GET",
    path: () => "/v1/memories?limit=5",
    status: 400,
    code: "validation_failed",
    field: "query.namespace",
  },
  {
    name: "memory: Idempotency-Key too long",
    method: "POST",
    path: () => "/v1/memories",
    json: { namespace: "n", text: "t" },
    headers: { "idempotency-key": "k".repeat(256) },
    status: 400,
    code: "validation_failed",
    field: "Idempotency-Key",
  },
  {
    name: "memory: wrong content type",
    method: "PUT",
    path: () => "/v1/memories/n/k",
    raw: "text=t",
    headers: { "content-type": "text/plain" },
    status: 415,
    code: "unsupported_media_type",
  },
  {
    name: "malformed memory id",
    method: "GET",
    path: () => "/v1/memories/not-a-uuid",
    status: 404,
    code: "not_found",
  },
  {
    name: "usage: bad day",
    method: "GET",
    path: () => "/v1/usage?from=2025-02-30",
    status: 400,
    code: "validation_failed",
    field: "query.from",
  },
  {
    name: "cache invalidate: no tags",
    method: "POST",
    path: () => "/v1/cache/invalidate",
    json: { tags: [] },
    status: 400,
    code: "validation_failed",
    field: "tags",
  },
  // Text PostgreSQL cannot store (NUL; unpaired surrogates have no UTF-8), anywhere a client string goes.
  ...(
    [
      ["thread metadata value", "/v1/threads", (x: string) => ({ metadata: { a: x } }), "metadata.a"],
      ["thread metadata key", "/v1/threads", (x: string) => ({ metadata: { [`k${x}`]: 1 } }), `metadata.k`],
      [
        "nested metadata value",
        "/v1/threads",
        (x: string) => ({ metadata: { a: { b: [1, x] } } }),
        "metadata.a.b.1",
      ],
      ["run input", runPath, (x: string) => ({ agent: "echo", input: `hi${x}` }), "input"],
      [
        "run input part",
        runPath,
        (x: string) => ({ agent: "echo", input: { role: "user", content: [{ type: "text", text: x }] } }),
        "input.content.0.text",
      ],
      [
        "run metadata",
        runPath,
        (x: string) => ({ agent: "echo", input: "hi", metadata: { m: x } }),
        "metadata.m",
      ],
      [
        "resume input",
        () => `/v1/runs/${runId}/resume`,
        (x: string) => ({ decision: "approve", input: { note: x } }),
        "input.note",
      ],
      ["memory text", () => "/v1/memories", (x: string) => ({ namespace: "n", text: `t${x}` }), "text"],
      [
        "memory namespace",
        () => "/v1/memories",
        (x: string) => ({ namespace: `n${x}`, text: "t" }),
        "namespace",
      ],
      [
        "memory metadata",
        () => "/v1/memories",
        (x: string) => ({ namespace: "n", text: "t", metadata: { m: x } }),
        "metadata.m",
      ],
      [
        "memory search query",
        () => "/v1/memories/search",
        (x: string) => ({ namespace: "n", query: x }),
        "query",
      ],
      [
        "memory search filter",
        () => "/v1/memories/search",
        (x: string) => ({ namespace: "n", query: "q", filter: { [x]: "v" } }),
        "filter.",
      ],
      ["cache tag", () => "/v1/cache/invalidate", (x: string) => ({ tags: [`t${x}`] }), "tags.0"],
    ] as const
  ).flatMap(([what, path, body, field]): Case[] =>
    (
      [
        ["NUL", "\u0000"],
        ["lone low surrogate", "\udfff"],
        ["lone high surrogate", "\ud800"],
      ] as const
    ).map(([kind, bad]) => ({
      name: `${what}: ${kind}`,
      method: "POST",
      path: typeof path === "string" ? () => path : path,
      json: body(bad),
      status: 400,
      code: "validation_failed",
      // Keys are named with the offending key itself: match the field's stable part.
      field: field.endsWith(".") || field === "metadata.k" ? field + bad : field,
    })),
  ),
  {
    name: "metadata nested 2,000 levels deep: refused before validation, naming the path",
    method: "POST",
    path: () => "/v1/threads",
    raw: `{"metadata":{"x":${'{"a":'.repeat(2_000)}1${"}".repeat(2_000)}}}`,
    headers: { "content-type": "application/json" },
    status: 400,
    code: "validation_failed",
    field: `metadata.x${".a".repeat(30)}`,
  },
  {
    name: "run input nested too deeply",
    method: "POST",
    path: runPath,
    raw: `{"agent":"echo","input":${"[".repeat(40)}${"]".repeat(40)}}`,
    headers: { "content-type": "application/json" },
    status: 400,
    code: "validation_failed",
    field: `input${".0".repeat(31)}`,
  },
  {
    name: "metadata: a number JSON cannot carry (1e400)",
    method: "POST",
    path: () => "/v1/threads",
    raw: '{"metadata":{"n":1e400}}',
    headers: { "content-type": "application/json" },
    status: 400,
    code: "validation_failed",
    field: "metadata.n",
  },
  {
    name: "JSON null where an object is required (create thread)",
    method: "POST",
    path: () => "/v1/threads",
    raw: "null",
    headers: { "content-type": "application/json" },
    status: 400,
    code: "validation_failed",
    field: "body",
  },
  {
    name: "JSON null where an object is required (cancel)",
    method: "POST",
    path: () => `/v1/runs/${runId}/cancel`,
    raw: "null",
    headers: { "content-type": "application/json" },
    status: 400,
    code: "validation_failed",
    field: "body",
  },
  {
    name: "usage: year 0 (PostgreSQL has none)",
    method: "GET",
    path: () => "/v1/usage?from=0000-01-01&to=0000-01-05",
    status: 400,
    code: "validation_failed",
    field: "query.from",
  },
  {
    name: "bad percent-escape in the path",
    method: "GET",
    path: () => "/v1/threads/%zz",
    status: 400,
    code: "validation_failed",
    field: "path",
  },
  {
    name: "percent-escape that is not UTF-8 (an encoded lone surrogate)",
    method: "PUT",
    path: () => "/v1/memories/%ED%A0%80/k",
    json: { text: "t" },
    status: 400,
    code: "validation_failed",
    field: "path",
  },
  {
    name: "path parameter over 3 KiB",
    method: "GET",
    path: () => `/v1/memories/${"n".repeat(3 * 1024 + 1)}/k`,
    status: 400,
    code: "validation_failed",
    field: "path",
  },
  {
    name: "memory list: NUL in the query",
    method: "GET",
    path: () => "/v1/memories?namespace=a%00",
    status: 400,
    code: "validation_failed",
    field: "query.namespace",
  },
  { name: "unknown route", method: "GET", path: () => "/v1/nothing/here", status: 404, code: "not_found" },
  {
    name: "unknown method",
    method: "DELETE",
    path: () => `/v1/threads/${threadId}`,
    status: 404,
    code: "not_found",
  },
];

describe("bad input: right status, problem code and field; nothing written; the process survives", () => {
  for (const c of cases) {
    it(c.name, async () => {
      const key = c.key ? c.key() : h.a.key;
      const res = await call(api.url, c.method, c.path(), {
        ...(key ? { key } : {}),
        ...(c.json !== undefined ? { json: c.json } : {}),
        ...(c.raw !== undefined ? { raw: c.raw } : {}),
        headers: { "x-request-id": `req-${c.name.replace(/[^a-z0-9]/gi, "-")}`.slice(0, 100), ...c.headers },
      });
      expect(res.status, res.text).toBe(c.status);
      expect(res.headers.get("content-type")).toMatch(/^application\/problem\+json/);
      const p = obj(res.body);
      expect(p).toMatchObject({ status: c.status, code: c.code, type: `urn:capstan:error:${c.code}` });
      expect(typeof p.title).toBe("string");
      expect(typeof p.detail).toBe("string");
      // The caller's request id is honoured, echoed, and quoted in the problem.
      expect(p.request_id).toBe(res.headers.get("x-request-id"));
      expect(p.request_id).toMatch(/^req-/);
      if (c.field) {
        const fields = (p.fields ?? []) as { field: string; message: string }[];
        expect(
          fields.map((f) => f.field),
          JSON.stringify(p),
        ).toContain(c.field);
      }
      if (c.status === 401) expect(res.headers.get("www-authenticate")).toMatch(/^Bearer/);
      expect(await rowCounts(h.t)).toEqual(baseline);
    });
  }

  it("still serves normally afterwards, and a request id that is not sane is replaced", async () => {
    const res = await call(api.url, "GET", `/v1/threads/${threadId}`, {
      key: h.a.key,
      headers: { "x-request-id": "bad id with spaces" },
    });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-request-id")).toMatch(/^[0-9a-f-]{36}$/);
    expect((await call(api.url, "GET", "/healthz")).status).toBe(200);
    expect(await rowCounts(h.t)).toEqual(baseline);
  });

  it("valid Unicode outside the BMP (surrogate pairs) is stored and answered exactly as sent", async () => {
    const text = "emoji 😀, 𝄞 and é";
    const th = await call(api.url, "POST", "/v1/threads", {
      key: h.a.key,
      json: { metadata: { [text]: text, list: [text] } },
    });
    expect(th.status, th.text).toBe(201);
    const back = await call(api.url, "GET", `/v1/threads/${String(obj(th.body).id)}`, { key: h.a.key });
    expect(obj(back.body).metadata).toEqual({ [text]: text, list: [text] });
    const put = await call(api.url, "PUT", `/v1/memories/uni/${encodeURIComponent("ключ 😀")}`, {
      key: h.a.key,
      json: { text },
    });
    expect(put.status, put.text).toBe(201);
    expect(obj(put.body)).toMatchObject({ text, key: "ключ 😀" });
    const m = await h.t.db.query<{ text: string }>("SELECT text FROM memories WHERE id = $1", [
      obj(put.body).id,
    ]);
    expect(m.rows[0]!.text).toBe(text);
    // Reset what this test wrote, so the table's "nothing written" baseline still holds.
    await h.t.db.query("DELETE FROM memories WHERE id = $1", [obj(put.body).id]);
    await h.t.db.query("DELETE FROM threads WHERE id = $1", [obj(th.body).id]);
  });

  it("bytes Node's HTTP parser refuses are answered as problem+json too, on the raw socket", async () => {
    const raw = async (request: string): Promise<{ head: string; body: Record<string, unknown> }> => {
      const { port } = new URL(api.url);
      const socket = connect(Number(port), "127.0.0.1");
      let data = "";
      socket.setEncoding("utf8");
      socket.on("data", (c: string) => (data += c));
      await new Promise<void>((resolve, reject) => {
        socket.on("close", () => resolve());
        socket.on("error", reject);
        socket.write(request);
      });
      const at = data.indexOf("\r\n\r\n");
      return { head: data.slice(0, at), body: JSON.parse(data.slice(at + 4)) as Record<string, unknown> };
    };
    const bad = await raw("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bad: a\u007fb\r\n\r\n");
    expect(bad.head).toMatch(/^HTTP\/1\.1 400 /);
    expect(bad.head).toMatch(/content-type: application\/problem\+json/i);
    expect(bad.body).toMatchObject({
      status: 400,
      code: "validation_failed",
      fields: [{ field: "request" }],
    });
    const huge = await raw(`GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${"b".repeat(20_000)}\r\n\r\n`);
    expect(huge.head).toMatch(/^HTTP\/1\.1 431 /);
    expect(huge.body).toMatchObject({ status: 431, code: "headers_too_large" });
    expect(huge.body.request_id).toBe(/x-request-id: (\S+)/i.exec(huge.head)?.[1]);
  });

  it("conflicts: run_not_waiting and run_not_cancellable are 409; too_many_runs is 429 with Retry-After", async () => {
    const notWaiting = await call(api.url, "POST", `/v1/runs/${runId}/resume`, {
      key: h.a.key,
      json: { decision: "approve" },
    });
    expect(notWaiting.status).toBe(409);
    expect(obj(notWaiting.body)).toMatchObject({
      code: "run_not_waiting",
      status: 409,
      run_status: "queued",
    });

    const ten = await h.tenant();
    await updateTenantLimits(h.t.db, ten.id, { maxPending: 1 });
    const th = await call(api.url, "POST", "/v1/threads", { key: ten.key, json: {} });
    const tid = obj(th.body).id as string;
    const first = await call(api.url, "POST", `/v1/threads/${tid}/runs`, {
      key: ten.key,
      json: { agent: "echo", input: "1" },
    });
    expect(first.status).toBe(202);
    const second = await call(api.url, "POST", `/v1/threads/${tid}/runs`, {
      key: ten.key,
      json: { agent: "echo", input: "2" },
    });
    expect(second.status).toBe(429);
    expect(obj(second.body)).toMatchObject({ code: "too_many_runs", limit: 1 });
    expect(Number(second.headers.get("retry-after"))).toBeGreaterThan(0);

    const firstId = obj(first.body).id as string;
    expect((await call(api.url, "POST", `/v1/runs/${firstId}/cancel`, { key: ten.key })).status).toBe(200);
    // Cancelling again is a no-op; a finished run is not cancellable.
    expect((await call(api.url, "POST", `/v1/runs/${firstId}/cancel`, { key: ten.key })).status).toBe(200);
    await h.t.db.query("UPDATE runs SET status = 'succeeded' WHERE id = $1", [firstId]);
    const done = await call(api.url, "POST", `/v1/runs/${firstId}/cancel`, { key: ten.key });
    expect(done.status).toBe(409);
    expect(obj(done.body)).toMatchObject({
      code: "run_not_cancellable",
      status: 409,
      run_status: "succeeded",
    });
  });

  it("database down: 503 database_unavailable with Retry-After, and the process keeps running", async () => {
    const { createPgDb } = await import("../../src/state/db.js");
    const { silentLogger } = await import("../../src/logger.js");
    const deadDb = createPgDb({
      url: "postgres://postgres@127.0.0.1:1/none",
      poolSize: 1,
      logger: silentLogger(),
    });
    const down = await h.start({ db: deadDb });
    try {
      const res = await call(down.url, "GET", `/v1/threads/${threadId}`, { key: h.a.key });
      expect(res.status).toBe(503);
      expect(obj(res.body)).toMatchObject({ code: "database_unavailable" });
      expect(res.headers.get("retry-after")).toBe("1");
      expect((await call(down.url, "GET", "/readyz")).status).toBe(503);
      expect((await call(down.url, "GET", "/healthz")).status).toBe(200);
    } finally {
      await down.close();
      await deadDb.close();
    }
  });
});
