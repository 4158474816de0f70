import { createServer, type IncomingHttpHeaders, type Server } from "node:http";
import { randomBytes } from "node:crypto";
import { gunzipSync } from "node:zlib";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { getRun } from "../../src/state/scheduler.js";
import { createApiKey, ensureTenant } from "../../src/state/tenants.js";
import { killAll, spawnCapstan, type Proc } from "../support/procs.js";
import { createTestDb, until, type TestDb } from "../support/pg.js";
import { deleteKeys, randomPrefix, REDIS_URL } from "../support/redis.js";

/**
 * Tracing end to end, on real processes: `capstan ingress` and `capstan
 * worker` export OTLP/HTTP (JSON) to a fake collector. A client request
 * carrying a `traceparent` creates a run; the ingress span continues the
 * client's trace, the trace context is stored with the run, the worker's run
 * span continues it and its step spans hang under the run span. The worker
 * runs with a 10-minute batch delay, so its spans can only arrive through
 * the flush on SIGTERM. With tracing off (the default), nothing reaches the
 * collector and no trace context is stored.
 */

// ---- a fake OTLP/HTTP collector (JSON encoding) ----

interface OtlpValue {
  stringValue?: string;
  intValue?: number | string;
  doubleValue?: number;
  boolValue?: boolean;
}
interface OtlpAttr {
  key: string;
  value: OtlpValue;
}
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  startTimeUnixNano: string | number;
  endTimeUnixNano: string | number;
  attributes?: OtlpAttr[];
  status?: { code?: number; message?: string };
}
interface OtlpRequest {
  resourceSpans: {
    resource?: { attributes?: OtlpAttr[] };
    scopeSpans: { scope?: { name?: string }; spans: OtlpSpan[] }[];
  }[];
}

/** A received span with its resource attributes and attributes flattened. */
interface Got {
  traceId: string;
  spanId: string;
  parentSpanId: string | undefined;
  name: string;
  kind: number;
  start: bigint;
  end: bigint;
  status: number;
  attrs: Record<string, string | number | boolean>;
  resource: Record<string, string | number | boolean>;
  scope: string | undefined;
}

// OTLP SpanKind numbers (proto enum; the JSON encoding keeps them numeric).
const KIND = { INTERNAL: 1, SERVER: 2, CLIENT: 3, CONSUMER: 5 } as const;
const STATUS_ERROR = 2;

function flat(attrs: OtlpAttr[] | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const a of attrs ?? []) {
    const v = a.value;
    if (v.stringValue !== undefined) out[a.key] = v.stringValue;
    else if (v.intValue !== undefined) out[a.key] = Number(v.intValue);
    else if (v.doubleValue !== undefined) out[a.key] = v.doubleValue;
    else if (v.boolValue !== undefined) out[a.key] = v.boolValue;
  }
  return out;
}

interface Collector {
  url: string;
  spans: Got[];
  requests: { headers: IncomingHttpHeaders; contentType: string | undefined }[];
  close(): Promise<void>;
}

async function startCollector(): Promise<Collector> {
  const spans: Got[] = [];
  const requests: Collector["requests"] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      requests.push({ headers: req.headers, contentType: req.headers["content-type"] });
      if (req.method !== "POST" || req.url !== "/v1/traces") {
        res.writeHead(404).end();
        return;
      }
      let body = Buffer.concat(chunks);
      if (req.headers["content-encoding"] === "gzip") body = gunzipSync(body);
      const parsed = JSON.parse(body.toString("utf8")) as OtlpRequest;
      for (const rs of parsed.resourceSpans) {
        const resource = flat(rs.resource?.attributes);
        for (const ss of rs.scopeSpans) {
          for (const s of ss.spans) {
            spans.push({
              traceId: s.traceId,
              spanId: s.spanId,
              parentSpanId: s.parentSpanId || undefined,
              name: s.name,
              kind: s.kind,
              start: BigInt(s.startTimeUnixNano),
              end: BigInt(s.endTimeUnixNano),
              status: s.status?.code ?? 0,
              attrs: flat(s.attributes),
              resource,
              scope: ss.scope?.name,
            });
          }
        }
      }
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const addr = server.address();
  const port = typeof addr === "object" && addr ? addr.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    spans,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

// ---- the system under test ----

let t: TestDb;
let key: string;
let tenantId: string;
let collector: Collector;
let quietCollector: Collector;
const prefix = randomPrefix();
const procs: Proc[] = [];

beforeAll(async () => {
  t = await createTestDb();
  tenantId = (await ensureTenant(t.db, "traced")).id;
  key = (await createApiKey(t.db, tenantId, "tracing test")).key;
  collector = await startCollector();
  quietCollector = await startCollector();
});
afterEach(async () => {
  await killAll(procs.splice(0));
});
afterAll(async () => {
  await collector?.close();
  await quietCollector?.close();
  await deleteKeys(prefix);
  await t?.drop();
});

const CONFIG = "test/fixtures/tracing.config.ts";

function spawnRole(role: "ingress" | "worker", env: Record<string, string>): Proc {
  const p = spawnCapstan(["--config", CONFIG, role, "--no-migrate"], {
    DATABASE_URL: t.url,
    REDIS_URL,
    CAPSTAN_REDIS_PREFIX: prefix,
    CAPSTAN_POLL_MS: "200",
    CAPSTAN_SHUTDOWN_GRACE_MS: "1000",
    // Info: the ingress prints the URL it listens on (port 0: any free port).
    CAPSTAN_LOG_LEVEL: "info",
    PORT: "0",
    ...env,
  });
  procs.push(p);
  return p;
}

async function ingressUrl(p: Proc): Promise<string> {
  return until(() => /"url":"(http:\/\/[^"]+)","msg":"ingress listening"/.exec(p.output())?.[1], {
    timeoutMs: 30_000,
    what: `the ingress to listen (output: ${p.output().slice(-2_000)})`,
  });
}

async function api(
  base: string,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(base + path, {
    method,
    headers: {
      authorization: `Bearer ${key}`,
      ...(body !== undefined ? { "content-type": "application/json" } : {}),
      ...headers,
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  return { status: res.status, json: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

async function settled(runId: string): Promise<void> {
  await until(
    async () => {
      const r = await getRun(t.db, tenantId, runId);
      return r.status === "succeeded" || r.status === "failed" ? r : null;
    },
    { timeoutMs: 30_000, what: `run ${runId} to finish` },
  );
  expect((await getRun(t.db, tenantId, runId)).status).toBe("succeeded");
}

async function storedTraceContext(runId: string): Promise<unknown> {
  const r = await t.db.query<{ trace_context: unknown }>("SELECT trace_context FROM runs WHERE id = $1", [
    runId,
  ]);
  return r.rows[0]?.trace_context;
}

async function stopped(p: Proc): Promise<void> {
  p.kill("SIGTERM");
  const { code } = await p.exited;
  expect(code, p.output().slice(-3_000)).toBe(0);
}

const hex = (bytes: number) => randomBytes(bytes).toString("hex");

describe("OpenTelemetry tracing", () => {
  it("continues the client's trace from the ingress request through the worker's run and steps", async () => {
    const tracingEnv = {
      CAPSTAN_TRACING: "otlp",
      // The general endpoint is a base URL: the exporter posts to <base>/v1/traces.
      OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
      OTEL_EXPORTER_OTLP_HEADERS: "x-collector-token=s3cret%20token",
    };
    const ingress = spawnRole("ingress", { ...tracingEnv, OTEL_BSP_SCHEDULE_DELAY: "100" });
    // The worker exports only when its batch is full or on shutdown.
    const worker = spawnRole("worker", { ...tracingEnv, OTEL_BSP_SCHEDULE_DELAY: "600000" });
    const base = await ingressUrl(ingress);

    // A request without trace context starts a new trace; probes are not traced.
    const thread = await api(base, "POST", "/v1/threads", {});
    expect(thread.status).toBe(201);
    const threadId = thread.json.id as string;
    expect((await fetch(base + "/healthz")).status).toBe(200);

    const clientTrace = hex(16);
    const clientSpan = hex(8);
    const created = await api(
      base,
      "POST",
      `/v1/threads/${threadId}/runs`,
      { agent: "traced", input: 'lookup {"orderId": "A1"}' },
      { traceparent: `00-${clientTrace}-${clientSpan}-01`, tracestate: "vendor=opaque" },
    );
    expect(created.status).toBe(202);
    const runId = created.json.id as string;
    await settled(runId);

    // Stored with the run: the ingress span's context (same trace, its own span id), tracestate kept.
    const stored = (await storedTraceContext(runId)) as { traceparent: string; tracestate?: string };
    const [version, storedTrace, storedSpan, flags] = stored.traceparent.split("-");
    expect({ version, storedTrace, flags }).toEqual({ version: "00", storedTrace: clientTrace, flags: "01" });
    expect(storedSpan).toMatch(/^[0-9a-f]{16}$/);
    expect(storedSpan).not.toBe(clientSpan);
    expect(stored.tracestate).toBe("vendor=opaque");

    // Ingress spans arrive while it runs (100 ms batches).
    const request = await until(
      () => collector.spans.find((s) => s.traceId === clientTrace && s.kind === KIND.SERVER),
      { what: "the ingress request span" },
    );
    expect(request.name).toBe("POST /v1/threads/:id/runs");
    expect(request.parentSpanId).toBe(clientSpan);
    expect(request.spanId).toBe(storedSpan);
    expect(request.attrs).toMatchObject({
      "http.request.method": "POST",
      "http.route": "/v1/threads/:id/runs",
      "http.response.status_code": 202,
      "url.path": `/v1/threads/${threadId}/runs`,
      "capstan.tenant.id": tenantId,
    });
    expect(request.status).not.toBe(STATUS_ERROR);
    expect(request.resource).toMatchObject({
      "service.name": "capstan-tracing-test",
      "capstan.role": "ingress",
    });
    expect(request.scope).toBe("capstan");
    // The exporter sent the configured header, percent-decoded, and JSON.
    expect(collector.requests[0]?.headers["x-collector-token"]).toBe("s3cret token");
    expect(collector.requests[0]?.contentType).toMatch(/^application\/json/);

    const threadSpan = await until(() => collector.spans.find((s) => s.name === "POST /v1/threads"), {
      what: "the thread request span",
    });
    expect(threadSpan.parentSpanId).toBeUndefined();
    expect(threadSpan.traceId).not.toBe(clientTrace);
    expect(threadSpan.attrs["http.response.status_code"]).toBe(201);

    // Nothing from the worker yet: its spans wait for the flush on SIGTERM.
    expect(collector.spans.some((s) => s.resource["capstan.role"] === "worker")).toBe(false);
    await stopped(worker);
    const run = await until(
      () => collector.spans.find((s) => s.attrs["capstan.run.id"] === runId && s.kind === KIND.CONSUMER),
      { what: "the worker's run span (flushed on SIGTERM)" },
    );
    expect(run.traceId).toBe(clientTrace);
    expect(run.parentSpanId).toBe(request.spanId);
    expect(run.name).toBe("invoke_agent traced");
    expect(run.resource).toMatchObject({
      "service.name": "capstan-tracing-test",
      "capstan.role": "worker",
    });
    expect(run.attrs).toMatchObject({
      "capstan.run.id": runId,
      "capstan.thread.id": threadId,
      "capstan.tenant.id": tenantId,
      "capstan.agent": "traced",
      "capstan.run.attempt": 1,
      "capstan.run.outcome": "succeeded",
      "gen_ai.agent.name": "traced",
    });

    // LLM step (calls the tool), tool step, LLM step (answers): children of the run span.
    const steps = collector.spans
      .filter((s) => s.parentSpanId === run.spanId)
      .sort((a, b) => (a.start < b.start ? -1 : 1));
    expect(steps.map((s) => [s.name, s.kind, s.attrs["capstan.step.kind"]])).toEqual([
      ["chat tools", KIND.CLIENT, "llm"],
      // Named after the tool once the tool step passes `toolName` to its hook.
      [expect.stringMatching(/^execute_tool( lookup)?$/), KIND.INTERNAL, "tool"],
      ["chat tools", KIND.CLIENT, "llm"],
    ]);
    for (const s of steps) {
      expect(s.traceId).toBe(clientTrace);
      // Backdated by the measured step time, inside the run span.
      expect(s.start).toBeGreaterThanOrEqual(run.start - 5_000_000n); // ms rounding of the backdate
      expect(s.end).toBeLessThanOrEqual(run.end);
      expect(s.start).toBeLessThanOrEqual(s.end);
    }
    const journal = await t.db.query<{ input_tokens: number; output_tokens: number }>(
      "SELECT input_tokens, output_tokens FROM steps WHERE run_id = $1 AND kind = 'llm' ORDER BY step_no",
      [runId],
    );
    const llm = steps.filter((s) => s.kind === KIND.CLIENT);
    expect(
      llm.map((s) => ({
        model: s.attrs["gen_ai.request.model"],
        provider: s.attrs["gen_ai.provider.name"],
        label: s.attrs["capstan.model"],
        input: s.attrs["gen_ai.usage.input_tokens"],
        output: s.attrs["gen_ai.usage.output_tokens"],
      })),
    ).toEqual(
      journal.rows.map((r) => ({
        model: "tools",
        provider: "scripted",
        label: "scripted:tools",
        input: r.input_tokens,
        output: r.output_tokens,
      })),
    );
    expect(journal.rows.every((r) => r.input_tokens > 0 && r.output_tokens > 0)).toBe(true);

    await stopped(ingress);
    // Probes never produce spans.
    expect(collector.spans.some((s) => s.name.includes("/healthz"))).toBe(false);
    expect(collector.spans.every((s) => s.attrs["http.route"] !== "/healthz")).toBe(true);
  });

  it("is off by default: no export (even with an OTLP endpoint set) and no trace context stored", async () => {
    const env = { OTEL_EXPORTER_OTLP_ENDPOINT: quietCollector.url, OTEL_BSP_SCHEDULE_DELAY: "100" };
    const ingress = spawnRole("ingress", env);
    const worker = spawnRole("worker", env);
    const base = await ingressUrl(ingress);
    const thread = await api(base, "POST", "/v1/threads", {});
    const created = await api(
      base,
      "POST",
      `/v1/threads/${thread.json.id as string}/runs`,
      { agent: "traced", input: 'lookup {"orderId": "A2"}' },
      { traceparent: `00-${hex(16)}-${hex(8)}-01` },
    );
    expect(created.status).toBe(202);
    const runId = created.json.id as string;
    await settled(runId);
    expect(await storedTraceContext(runId)).toBeNull();
    // Once both processes have exited nothing more can arrive.
    await stopped(worker);
    await stopped(ingress);
    expect(quietCollector.requests).toEqual([]);
    expect(ingress.output()).not.toMatch(/tracing enabled/);
  });
});
