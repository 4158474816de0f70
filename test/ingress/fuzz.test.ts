/**
 * A seeded fuzzer over every route the app registers (read from the app's own
 * route table, so a new route is fuzzed without touching this file): a few
 * thousand requests built from valid ones by mutation (NUL and unpaired
 * surrogates in values and keys, deep nesting, huge numbers, wrong types,
 * nulls, bad dates, overlong strings, bad percent-escapes, bad headers and
 * content types). Every answer must be below 500, and every error answer a
 * problem+json whose status matches; no request may hang.
 *
 * Deterministic: request i is built from (seed, i) alone. Reproduce a failure
 * with FUZZ_SEED=<seed printed in the failure> (FUZZ_REQUESTS=<n> to change
 * the count).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { localLexicalEmbedder } from "../../src/agent/embeddings.js";
import type { RunningIngress } from "../../src/ingress/server.js";
import { suspendRun } from "../../src/state/scheduler.js";
import { call, createHarness, FakeWorker, obj, threadAndRun, type Harness } from "./harness.js";

const SEED = Number(process.env.FUZZ_SEED ?? 20_260_419);
const REQUESTS = Number(process.env.FUZZ_REQUESTS ?? 3_000);
const PARALLEL = 6;
const REQUEST_TIMEOUT_MS = 20_000;

// ---------- deterministic randomness ----------

type Rng = () => number;

/** mulberry32: small, fast, good enough to pick mutations. */
function mulberry32(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}
const rngFor = (seed: number, i: number): Rng => mulberry32(Math.imul(seed ^ 0x9e3779b9, 31) + i * 7919);
const pick = <T>(rng: Rng, xs: readonly T[]): T => xs[Math.floor(rng() * xs.length)]!;
const chance = (rng: Rng, p: number): boolean => rng() < p;

// ---------- the routes, from the app itself ----------

interface Route {
  method: string;
  /** e.g. `/v1/memories/:namespace|:id/:key` (a merged param node keeps both names). */
  path: string;
}

/**
 * Parse `printRoutes({ commonPrefix: false })`: one node per line, four
 * columns of tree drawing per level, `segment (METHODS)` for nodes with routes.
 */
function routesOf(tree: string): Route[] {
  const out: Route[] = [];
  const prefixes: string[] = [];
  for (const line of tree.split("\n")) {
    const m = /^([│ ]*)[├└]── (.+?)(?: \(([A-Z, ]+)\))?$/.exec(line);
    if (!m) continue;
    const level = m[1]!.length / 4;
    const path = (prefixes[level - 1] ?? "") + m[2]!;
    prefixes[level] = path;
    prefixes.length = level + 1;
    for (const method of (m[3] ?? "").split(",").map((s) => s.trim())) if (method) out.push({ method, path });
  }
  return out;
}

/** The route with every param as `:p`: the key of the templates below. */
const shape = (r: Route): string => `${r.method} ${r.path.replace(/:[^/]+/g, ":p")}`;

// ---------- valid requests to start from ----------

const BODIES: Record<string, () => unknown> = {
  "POST /v1/threads": () => ({ metadata: { customer: "c-1", tags: ["a", "b"], n: 1 } }),
  "POST /v1/threads/:p/runs": () => ({
    agent: "echo",
    input: { role: "user", content: [{ type: "text", text: "hi" }] },
    multitask: "enqueue",
    metadata: { a: 1, nested: { b: [true, null] } },
  }),
  "POST /v1/runs/:p/cancel": () => ({}),
  "POST /v1/runs/:p/resume": () => ({ decision: "approve", input: { note: "ok", values: [1, "two", null] } }),
  "POST /v1/cache/invalidate": () => ({ tags: ["t1", "t2"] }),
  "POST /v1/memories": () => ({
    namespace: "ns",
    text: "remember this",
    metadata: { kind: "pref" },
    ttl_seconds: 3600,
  }),
  "POST /v1/memories/search": () => ({
    namespace: "ns",
    query: "remember",
    k: 5,
    filter: { kind: "pref" },
    max_distance: 1.5,
  }),
  "PUT /v1/memories/:p/:p": () => ({ text: "keyed memory", metadata: { kind: "pref" }, ttl_seconds: null }),
};

const QUERIES: Record<string, Record<string, string>> = {
  "GET /v1/threads/:p/messages": { after: "0", limit: "10" },
  "GET /v1/runs/:p/wait": { timeout: "0" },
  "GET /v1/runs/:p/events": { after: "0" },
  "GET /v1/usage": { from: "2026-01-01", to: "2026-01-31" },
  "GET /v1/memories": { namespace: "ns", limit: "5" },
};
const ANY_QUERY_NAMES = ["after", "limit", "timeout", "from", "to", "namespace", "cursor", "x"];

// ---------- nasty values ----------

/** A marker in the JSON that is replaced by raw text after serialising (what JSON.stringify cannot write). */
interface Raw {
  raw: string;
}
const isRaw = (v: unknown): v is Raw => typeof v === "object" && v !== null && "raw" in v;

const nest = (levels: number): string => "[".repeat(levels) + "]".repeat(levels);
const deepObject = (levels: number): string => '{"a":'.repeat(levels) + "1" + "}".repeat(levels);

const STRINGS = [
  "\u0000",
  "a\u0000b",
  "\udfff",
  "\ud800",
  "x\ud800y",
  "\udc00\ud800",
  "emoji 😀 ok",
  "",
  " ",
  "é",
  "\u001b[31m",
  "\u2028",
  "0000-01-01",
  "2025-02-30",
  "1969-12-31",
  "9999-12-31",
  "+275760-09-13",
  "00000000-0000-4000-8000-000000000000",
  "%zz",
  "../..",
  "__proto__",
  "constructor",
];
const longString = (rng: Rng): string =>
  pick(rng, ["x", "é", "😀", "\u0000"]).repeat(pick(rng, [257, 5_000, 33_000, 100_001]));

function nastyValue(rng: Rng): unknown {
  switch (Math.floor(rng() * 8)) {
    case 0:
    case 1:
      return pick(rng, STRINGS);
    case 2:
      return longString(rng);
    case 3:
      return {
        raw: pick(rng, [
          "1e400",
          "-1e400",
          "1e308",
          "123456789012345678901234567890",
          "-0",
          "0.1e-400",
          "9007199254740993",
          "1E+2",
        ]),
      };
    case 4:
      return pick(rng, [0, -1, 1.5, 2 ** 31, -(2 ** 53), Number.MAX_SAFE_INTEGER, true, false, null]);
    case 5:
      return pick(rng, [[], {}, [null], { a: null }, ["\u0000"], { "\ud800": 1 }, [[[]]]]);
    case 6:
      return { raw: pick(rng, [nest(31), nest(33), deepObject(40), nest(2_000), deepObject(3_000)]) };
    default:
      return pick(rng, ["echo", "approve", "reject", "interrupt", "text", "user", "ns"]);
  }
}

function nastyKey(rng: Rng): string {
  return pick(rng, [
    "\u0000",
    "k\u0000",
    "\udfff",
    "k\ud800",
    "",
    "x".repeat(65),
    "x".repeat(300),
    "__proto__",
    "constructor",
    "agent",
    "input",
    "metadata",
    "role",
    "content",
    "😀",
  ]);
}

// ---------- mutation ----------

type Path = (string | number)[];

function pathsOf(v: unknown, at: Path = [], out: Path[] = []): Path[] {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => pathsOf(x, [...at, i], out));
  else if (typeof v === "object" && v !== null && !isRaw(v))
    for (const [k, x] of Object.entries(v)) pathsOf(x, [...at, k], out);
  return out;
}

function setAt(root: unknown, path: Path, value: unknown, del = false): unknown {
  if (path.length === 0) return value;
  const parent = path.slice(0, -1).reduce<unknown>((o, k) => (o as Record<string, unknown>)[k], root) as
    Record<string, unknown> | unknown[];
  const last = path[path.length - 1]!;
  if (del && Array.isArray(parent)) parent.splice(Number(last), 1);
  else if (del) delete (parent as Record<string, unknown>)[last];
  else (parent as Record<string | number, unknown>)[last] = value;
  return root;
}

function mutateBody(rng: Rng, body: unknown): unknown {
  let v = body;
  const n = 1 + Math.floor(rng() * 3);
  for (let j = 0; j < n; j++) {
    const paths = pathsOf(v);
    const path = pick(rng, paths);
    const target = path.reduce<unknown>(
      (o, k) => (o === null || typeof o !== "object" ? undefined : (o as Record<string, unknown>)[k]),
      v,
    );
    const op = Math.floor(rng() * 10);
    if (op <= 4) {
      v = setAt(v, path, nastyValue(rng));
    } else if (op <= 6 && path.length > 0) {
      v = setAt(v, path, undefined, true);
    } else if (typeof target === "object" && target !== null && !Array.isArray(target) && !isRaw(target)) {
      (target as Record<string, unknown>)[nastyKey(rng)] = nastyValue(rng);
    } else if (Array.isArray(target)) {
      target.push(nastyValue(rng));
    } else {
      v = setAt(v, path, [target]);
    }
  }
  return v;
}

function serialise(v: unknown): string {
  const raws: string[] = [];
  const text = JSON.stringify(v, (_k, x: unknown) => {
    if (isRaw(x)) {
      raws.push(x.raw);
      return `@@RAW${raws.length - 1}@@`;
    }
    return x;
  });
  return (text ?? "").replace(/"@@RAW(\d+)@@"/g, (_m, i: string) => raws[Number(i)]!);
}

const WHOLE_BODIES = [
  "null",
  "[]",
  '"a string"',
  "42",
  "true",
  "{",
  '{"a":',
  "{}garbage",
  '{"agent":"echo","agent":5}',
  "\ufeff{}",
  nest(10_000),
  deepObject(2_000),
  '{"metadata":' + deepObject(33) + "}",
];

// ---------- path params and query values ----------

interface Fixtures {
  threadIds: string[];
  /** Finished runs: /wait and /events answer at once. */
  doneRunIds: string[];
  /** Waiting runs (resume, cancel move them on). */
  waitingRunIds: string[];
  memoryIds: string[];
  foreignThreadId: string;
}

const BAD_SEGMENTS = [
  "not-a-uuid",
  "00000000-0000-4000-8000-000000000000",
  "%zz",
  "%",
  "%00",
  "%ED%A0%80", // an encoded lone surrogate (not UTF-8)
  "%E0%A4%A",
  "%F0%9F%98%80",
  "%C3%A9",
  "a%2Fb",
  "%20",
  "..",
  "x".repeat(257),
  "x".repeat(4_000),
  "1'%20OR%20'1'='1",
];

/** A value for the `index`-th param of the route, chosen by the literal segment before it. */
function param(rng: Rng, route: Route, index: number, fx: Fixtures): string {
  if (chance(rng, 0.3)) return pick(rng, BAD_SEGMENTS);
  const segments = route.path.split("/");
  const at = segments.map((s, i) => (s.startsWith(":") ? i : -1)).filter((i) => i >= 0)[index] ?? 0;
  const literal = segments[at - 1] ?? "";
  const longPoll = /\/(wait|events)$/.test(route.path);
  if (literal === "threads") return chance(rng, 0.1) ? fx.foreignThreadId : pick(rng, fx.threadIds);
  if (literal === "runs")
    return pick(rng, longPoll ? fx.doneRunIds : [...fx.doneRunIds, ...fx.waitingRunIds]);
  if (literal === "memories")
    return pick(rng, [...fx.memoryIds, "ns", "other-ns", encodeURIComponent("ns 😀")]);
  if (literal.startsWith(":")) return pick(rng, ["k1", "k2", "key", encodeURIComponent("ключ")]);
  return pick(rng, [...fx.threadIds, ...fx.doneRunIds, ...fx.memoryIds]);
}

function queryValue(rng: Rng, valid: string | undefined): string {
  if (valid !== undefined && chance(rng, 0.4)) return encodeURIComponent(valid);
  const v = pick(rng, [
    ...STRINGS,
    "-1",
    "0",
    "201",
    "1e3",
    "0x10",
    "99999999999999999999",
    "1.2.3",
    "61",
    "0.0001",
    "2026-01-01",
    "x".repeat(5_000),
  ]);
  if (chance(rng, 0.2)) return pick(rng, ["%zz", "%", "%00", "%ED%BF%BF", "%E0%A4%A"]);
  // encodeURIComponent refuses lone surrogates: send their (invalid) UTF-8 bytes instead.
  return /\p{Cs}/u.test(v) ? "%ED%BF%BF" : encodeURIComponent(v);
}

// ---------- one request ----------

interface FuzzRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string | Uint8Array;
}

function build(i: number, routes: Route[], fx: Fixtures, keys: { a: string; b: string }): FuzzRequest {
  const rng = rngFor(SEED, i);
  const route = pick(rng, routes);
  const key = shape(route);
  let paramNo = 0;
  let path = route.path.replace(/:[^/]+/g, () => param(rng, route, paramNo++, fx));

  const valid = QUERIES[key] ?? {};
  const names = Object.keys(valid);
  const q: string[] = [];
  for (const name of names) if (!chance(rng, 0.2)) q.push(`${name}=${queryValue(rng, valid[name])}`);
  if (chance(rng, 0.3)) q.push(`${pick(rng, ANY_QUERY_NAMES)}=${queryValue(rng, undefined)}`);
  if (chance(rng, 0.05) && names.length > 0) q.push(`${pick(rng, names)}=1`); // a repeated parameter
  if (q.length > 0) path += "?" + q.join("&");

  const headers: Record<string, string> = {};
  const auth = rng();
  if (auth < 0.93) headers.authorization = `Bearer ${keys.a}`;
  else if (auth < 0.96) headers.authorization = `Bearer ${keys.b}`;
  else if (auth < 0.98)
    headers.authorization = pick(rng, ["Bearer cap_nope", "Basic eA==", "Bearer", "bearer  x y"]);

  if (chance(rng, 0.25)) {
    headers["idempotency-key"] = chance(rng, 0.85)
      ? `fz-${Math.floor(rng() * 40)}`
      : pick(rng, [" ", "k".repeat(256), "é", "a b", "k\tk"]);
  }
  if (route.path.endsWith("/events") && chance(rng, 0.3))
    headers["last-event-id"] = pick(rng, ["1", "0.1", "1.2.3", "-1", "99999999999999999999", "1.", "é"]);

  let method = route.method;
  if (chance(rng, 0.03)) method = pick(rng, ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);

  const req: FuzzRequest = { method, path, headers };
  if (method === "GET") return req; // fetch sends no body with GET

  const template = BODIES[key];
  const r = rng();
  if (r < 0.08 && template) req.body = serialise(template());
  else if (r < 0.18) req.body = pick(rng, WHOLE_BODIES);
  else if (r < 0.2)
    req.body = new Uint8Array([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x3a, 0x31, 0x7d]); // invalid UTF-8
  else if (r < 0.22) req.body = undefined;
  else req.body = serialise(mutateBody(rng, template ? template() : { x: 1 }));

  if (req.body !== undefined) {
    const ct = rng();
    headers["content-type"] =
      ct < 0.88
        ? "application/json"
        : pick(rng, [
            "text/plain",
            "application/json; charset=utf-16",
            "APPLICATION/JSON",
            "application/merge-patch+json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
          ]);
  }
  return req;
}

interface Outcome {
  status: number;
  contentType: string | null;
  text: string;
}

async function send(base: string, req: FuzzRequest): Promise<Outcome> {
  const res = await fetch(base + req.path, {
    method: req.method,
    headers: req.headers,
    ...(req.body !== undefined ? { body: req.body } : {}),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  return { status: res.status, contentType: res.headers.get("content-type"), text: await res.text() };
}

/** What is wrong with an answer, or undefined. */
function problemWith(o: Outcome): string | undefined {
  if (o.status >= 500) return `server error ${o.status}`;
  if (o.status < 400) return undefined;
  if (!o.contentType?.startsWith("application/problem+json")) return `error as ${o.contentType}`;
  let p: Record<string, unknown>;
  try {
    p = JSON.parse(o.text) as Record<string, unknown>;
  } catch {
    return "problem body is not JSON";
  }
  if (p.status !== o.status) return `problem status ${String(p.status)} ≠ HTTP ${o.status}`;
  if (typeof p.code !== "string" || p.type !== `urn:capstan:error:${p.code}`)
    return "problem without code/type";
  if (typeof p.request_id !== "string" || typeof p.detail !== "string")
    return "problem without request_id/detail";
  if (p.code === "validation_failed" && !(Array.isArray(p.fields) && p.fields.length > 0))
    return "validation_failed without the offending field";
  return undefined;
}

const describeReq = (i: number, r: FuzzRequest): string => {
  const body =
    r.body === undefined
      ? ""
      : typeof r.body === "string"
        ? r.body.slice(0, 300)
        : `<${r.body.length} bytes>`;
  return `FUZZ_SEED=${SEED} request #${i}: ${r.method} ${r.path.slice(0, 300)} ${JSON.stringify(r.headers)} ${body}`;
};

// ---------- the run ----------

let h: Harness;
let api: RunningIngress;
let fx: Fixtures;
let routes: Route[];

beforeAll(async () => {
  // No per-key or per-address limits: they would answer most requests 429 before validation.
  h = await createHarness({ flags: { http: { authFailuresPerMinute: 0 } } });
  api = await h.start({ embedder: localLexicalEmbedder(), rateLimit: false });
  routes = routesOf(api.app.printRoutes({ commonPrefix: false }));

  const done = await threadAndRun(api.url, h.a.key);
  await call(api.url, "POST", `/v1/runs/${done.runId}/cancel`, { key: h.a.key });
  const waitingRunIds: string[] = [];
  const threadIds = [done.threadId];
  for (let i = 0; i < 6; i++) {
    const { threadId, runId } = await threadAndRun(api.url, h.a.key, `wait ${i}`);
    threadIds.push(threadId);
    const w = await FakeWorker.claim(h);
    await suspendRun(h.t.db, w.run.lease, { kind: "approval", tool: "refund" });
    waitingRunIds.push(runId);
  }
  const memoryIds: string[] = [];
  for (const text of ["first memory", "second memory"]) {
    const m = await call(api.url, "POST", "/v1/memories", { key: h.a.key, json: { namespace: "ns", text } });
    memoryIds.push(obj(m.body).id as string);
  }
  await call(api.url, "PUT", "/v1/memories/ns/k1", { key: h.a.key, json: { text: "keyed" } });
  const foreign = await call(api.url, "POST", "/v1/threads", { key: h.b.key, json: {} });
  fx = {
    threadIds,
    doneRunIds: [done.runId],
    waitingRunIds,
    memoryIds,
    foreignThreadId: obj(foreign.body).id as string,
  };
});
afterAll(async () => {
  await h?.close();
});

describe(`fuzzer (seed ${SEED}, ${REQUESTS} requests)`, () => {
  it("reads every registered route from the app", () => {
    const shapes = new Set(routes.map(shape));
    for (const known of [
      "POST /v1/threads",
      "POST /v1/threads/:p/runs",
      "GET /v1/runs/:p/events",
      "POST /v1/runs/:p/resume",
      "PUT /v1/memories/:p/:p",
      "DELETE /v1/memories/:p",
      "GET /healthz",
    ]) {
      expect(shapes, known).toContain(known);
    }
    // Every body template and query template names a route that exists (no stale templates).
    for (const k of [...Object.keys(BODIES), ...Object.keys(QUERIES)]) expect(shapes, k).toContain(k);
  });

  // Typically 20-40 s on two busy cores; the timeout only guards against a shared machine's stalls.
  it("no 5xx, no hang; every error is problem+json naming its fields", { timeout: 180_000 }, async () => {
    const failures: string[] = [];
    const statuses = new Map<number, number>();
    let next = 0;
    const worker = async (): Promise<void> => {
      for (let i = next++; i < REQUESTS; i = next++) {
        const req = build(i, routes, fx, { a: h.a.key, b: h.b.key });
        let problem: string | undefined;
        try {
          const o = await send(api.url, req);
          statuses.set(o.status, (statuses.get(o.status) ?? 0) + 1);
          problem = problemWith(o);
          if (problem) problem += ` → ${o.text.slice(0, 300)}`;
        } catch (err) {
          const cause = (err as { cause?: unknown }).cause;
          problem = `no answer: ${String(err)}${cause instanceof Error ? ` (${cause.message})` : ""}`;
        }
        if (problem) failures.push(`${problem}\n    ${describeReq(i, req)}`);
      }
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));

    expect(failures.slice(0, 10), `${failures.length} bad answers (FUZZ_SEED=${SEED})`).toEqual([]);
    const count = (pred: (s: number) => boolean) =>
      [...statuses].filter(([s]) => pred(s)).reduce((n, [, c]) => n + c, 0);
    // Not degenerate: plenty of requests got through validation, plenty were refused by it.
    expect(count((s) => s >= 200 && s < 300)).toBeGreaterThan(REQUESTS * 0.05);
    expect(count((s) => s === 400)).toBeGreaterThan(REQUESTS * 0.3);
    expect((await call(api.url, "GET", "/healthz")).status).toBe(200);
  });
});
