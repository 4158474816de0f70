import Fastify from "fastify";
import type pg from "pg";
import { register as globalRegistry } from "prom-client";
import { describe, expect, it } from "vitest";
import { createMetrics } from "../../src/observability/metrics.js";
import { instrumentFastify } from "../../src/observability/http.js";
import { workerMetricsHooks } from "../../src/observability/worker-hooks.js";
import type { Queryable } from "../../src/state/db.js";
import type { ClaimedRun } from "../../src/state/types.js";
import { parseProm, pick, value } from "./prom-text.js";

/** A Queryable answering every query with `rows()` (or throwing what it throws). */
function fakeDb(rows: () => Record<string, unknown>[]): Queryable & { calls: number } {
  const db = {
    calls: 0,
    async query<R extends pg.QueryResultRow = pg.QueryResultRow>(): Promise<pg.QueryResult<R>> {
      db.calls++;
      const r = rows() as R[];
      return { rows: r, rowCount: r.length, command: "SELECT", oid: 0, fields: [] };
    },
  };
  return db;
}

function group(agent: string, tenant: string, ready: number, extra: Partial<Record<string, unknown>> = {}) {
  return {
    agent,
    tenant,
    max_concurrency: null,
    ready,
    blocked: 0,
    running: 0,
    waiting: 0,
    oldest_ready_age_s: ready > 0 ? 5 : null,
    ...extra,
  };
}

const fakeRun = (agent: string, queuedMsAgo: number): ClaimedRun =>
  ({
    id: "r1",
    agent,
    queuedAt: new Date(Date.now() - queuedMsAgo),
    lease: { runId: "r1", epoch: 1, workerId: "w" },
  }) as ClaimedRun;

describe("createMetrics", () => {
  it("renders every metric with its names and labels on a private registry", async () => {
    const m = createMetrics({ defaultLabels: { role: "worker" } });
    const hooks = workerMetricsHooks(m, { agents: ["support"], concurrency: 50 });
    hooks.onClaim(fakeRun("support", 1500));
    hooks.onClaim(fakeRun("not-loaded", 10));
    hooks.onRunEnd(fakeRun("support", 0), "succeeded", 1200);
    hooks.onStep({
      agent: "support",
      kind: "llm",
      ms: 850,
      model: "openai:gpt-4o-mini",
      usage: { inputTokens: 120, outputTokens: 30 },
    });
    hooks.onStep({ agent: "support", kind: "tool", ms: 7 });
    hooks.onModelRetry({ status: 429 });
    hooks.onModelRetry({});
    hooks.onFencedWrite();
    hooks.onLeaseReclaim({ requeued: 2, failed: 1 });
    hooks.onRateLimited("provider");
    m.sseClients.inc();
    m.trackDbPool(() => ({ total: 7, idle: 3, waiting: 1 }));

    const { contentType, body } = await m.render();
    expect(contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    const s = parseProm(body);
    // Every series carries the default label.
    expect(s.filter((x) => x.labels.role !== "worker")).toEqual([]);

    expect(value(s, "capstan_runs_in_flight")).toBe(1);
    expect(value(s, "capstan_worker_capacity")).toBe(50);
    expect(value(s, "capstan_runs_finished_total", { outcome: "succeeded", agent: "support" })).toBe(1);
    // Unknown agent names are folded: label values stay bounded.
    expect(value(s, "capstan_pickup_latency_seconds_count", { agent: "_unknown" })).toBe(1);
    expect(value(s, "capstan_pickup_latency_seconds_count", { agent: "support" })).toBe(1);
    expect(value(s, "capstan_pickup_latency_seconds_bucket", { agent: "support", le: "1" })).toBe(0);
    expect(value(s, "capstan_pickup_latency_seconds_bucket", { agent: "support", le: "2.5" })).toBe(1);
    expect(value(s, "capstan_step_duration_seconds_count", { kind: "llm", agent: "support" })).toBe(1);
    expect(value(s, "capstan_step_duration_seconds_bucket", { kind: "llm", agent: "support", le: "1" })).toBe(
      1,
    );
    expect(
      value(s, "capstan_step_duration_seconds_bucket", { kind: "tool", agent: "support", le: "0.005" }),
    ).toBe(0);
    expect(
      value(s, "capstan_step_duration_seconds_bucket", { kind: "tool", agent: "support", le: "0.01" }),
    ).toBe(1);
    // Buckets span 5 ms .. 120 s.
    const les = pick(s, "capstan_step_duration_seconds_bucket", { kind: "llm" }).map((x) => x.labels.le);
    expect(les[0]).toBe("0.005");
    expect(les.at(-2)).toBe("120");
    expect(value(s, "capstan_llm_input_tokens_total", { model: "openai:gpt-4o-mini" })).toBe(120);
    expect(value(s, "capstan_llm_output_tokens_total", { model: "openai:gpt-4o-mini" })).toBe(30);
    expect(value(s, "capstan_model_retries_total", { status: "429" })).toBe(1);
    expect(value(s, "capstan_model_retries_total", { status: "network" })).toBe(1);
    expect(value(s, "capstan_fenced_writes_total")).toBe(1);
    expect(value(s, "capstan_lease_reclaims_total", { result: "requeued" })).toBe(2);
    expect(value(s, "capstan_lease_reclaims_total", { result: "failed" })).toBe(1);
    expect(value(s, "capstan_rate_limit_rejections_total", { scope: "provider" })).toBe(1);
    expect(value(s, "capstan_sse_clients")).toBe(1);
    expect(value(s, "capstan_db_pool_connections")).toBe(7);
    expect(value(s, "capstan_db_pool_idle_connections")).toBe(3);
    expect(value(s, "capstan_db_pool_waiting_clients")).toBe(1);
    // Default Node metrics, event-loop lag included.
    expect(value(s, "nodejs_eventloop_lag_seconds")).toBeGreaterThanOrEqual(0);
    expect(pick(s, "nodejs_eventloop_lag_p99_seconds")).toHaveLength(1);
    expect(pick(s, "process_resident_memory_bytes")).toHaveLength(1);
    // Queue stats are not tracked: no queue series, and no `up` either.
    expect(pick(s, "capstan_queue_depth")).toEqual([]);
    expect(pick(s, "capstan_queue_stats_up")).toEqual([]);
    // Nothing leaked into prom-client's global registry.
    expect((await globalRegistry.metrics()).includes("capstan_")).toBe(false);
  });

  it("counts cache lookups by cache and result, and the tokens LLM hits saved by model", async () => {
    const m = createMetrics({ defaultMetrics: false });
    const hooks = workerMetricsHooks(m);
    const model = "openai:gpt-4o-mini";
    hooks.onCache({ cache: "llm", hit: false, model, tokensSaved: 0 });
    hooks.onCache({ cache: "llm", hit: true, model, tokensSaved: 150 });
    hooks.onCache({ cache: "llm", hit: true, model, tokensSaved: 50 });
    hooks.onCache({ cache: "tool", hit: true });
    hooks.onCache({ cache: "tool", hit: false });
    hooks.onCache({ cache: "tool", hit: false });
    hooks.onCache({ cache: "embedding", hit: true });
    const s = parseProm((await m.render()).body);
    const req = (cache: string, result: string) =>
      value(s, "capstan_cache_requests_total", { cache, result });
    expect([req("llm", "hit"), req("llm", "miss"), req("tool", "hit"), req("tool", "miss")]).toEqual([
      2, 1, 1, 2,
    ]);
    expect(req("embedding", "hit")).toBe(1);
    expect(req("embedding", "miss")).toBeUndefined();
    expect(value(s, "capstan_cache_tokens_saved_total", { model })).toBe(200);
    // Only LLM hits with a model save tokens; a tool hit adds no tokens_saved series.
    expect(pick(s, "capstan_cache_tokens_saved_total")).toHaveLength(1);
    // A hook never throws, even on nonsense from a caller.
    expect(() => hooks.onCache({ cache: "llm", hit: true, model, tokensSaved: Number.NaN })).not.toThrow();
  });

  it("lets several instances live in one process, with their own prefix", async () => {
    const a = createMetrics({ defaultMetrics: false });
    const b = createMetrics({ prefix: "other_", defaultMetrics: false });
    const c = createMetrics();
    a.fencedWrites.inc(3);
    const sa = parseProm((await a.render()).body);
    const sb = parseProm((await b.render()).body);
    const sc = parseProm((await c.render()).body);
    expect(value(sa, "capstan_fenced_writes_total")).toBe(3);
    expect(value(sb, "other_fenced_writes_total")).toBe(0);
    expect(value(sc, "capstan_fenced_writes_total")).toBe(0);
    expect(pick(sa, "nodejs_eventloop_lag_seconds")).toEqual([]);
  });

  it("exports queue stats from one cached query, folding the long tail into _other", async () => {
    const m = createMetrics({ defaultMetrics: false });
    const db = fakeDb(() => [
      group("a", "t1", 10, { running: 4, max_concurrency: 5 }),
      group("a", "t2", 3, { waiting: 2 }),
      group("b", "t1", 1, { running: 1 }),
      group("b", "t3", 1, { blocked: 2, oldest_ready_age_s: 9 }),
    ]);
    m.trackQueue(db, { ttlMs: 60_000, maxSeries: 3 });
    const s = parseProm((await m.render()).body);
    // All queue gauges of one scrape (collected concurrently) shared one query.
    expect(db.calls).toBe(1);
    expect(value(s, "capstan_queue_stats_up")).toBe(1);
    expect(value(s, "capstan_queue_depth", { agent: "a", tenant: "t1" })).toBe(10);
    expect(value(s, "capstan_queue_depth", { agent: "a", tenant: "t2" })).toBe(3);
    // (b,t1) and (b,t3) are the smallest: summed into one series.
    expect(value(s, "capstan_queue_depth", { agent: "_other", tenant: "_other" })).toBe(2);
    expect(value(s, "capstan_queue_blocked", { agent: "_other", tenant: "_other" })).toBe(2);
    expect(value(s, "capstan_queue_oldest_age_seconds", { agent: "_other", tenant: "_other" })).toBe(9);
    expect(pick(s, "capstan_queue_depth")).toHaveLength(3);
    expect(value(s, "capstan_runs_running", { agent: "a" })).toBe(4);
    expect(value(s, "capstan_runs_running", { agent: "b" })).toBe(1);
    expect(value(s, "capstan_runs_waiting", { agent: "a" })).toBe(2);
    // t1: min(10 + 4 + 1 + 1, cap 5) = 5; t2: 3; t3: 1.
    expect(value(s, "capstan_scaling_demand")).toBe(9);
    // Within the TTL a second scrape asks the database nothing.
    await m.render();
    expect(db.calls).toBe(1);
  });

  it("omits the queue series (never stale numbers) and says up=0 when the read fails", async () => {
    const m = createMetrics({ defaultMetrics: false });
    let fail = false;
    const db = fakeDb(() => {
      if (fail) throw new Error("connection refused");
      return [group("a", "t1", 2)];
    });
    m.trackQueue(db, { ttlMs: 0 });
    let s = parseProm((await m.render()).body);
    expect(value(s, "capstan_queue_depth", { agent: "a", tenant: "t1" })).toBe(2);
    fail = true;
    s = parseProm((await m.render()).body);
    expect(value(s, "capstan_queue_stats_up")).toBe(0);
    expect(pick(s, "capstan_queue_depth")).toEqual([]);
    expect(pick(s, "capstan_scaling_demand")).toEqual([]);
    fail = false;
    s = parseProm((await m.render()).body);
    expect(value(s, "capstan_queue_stats_up")).toBe(1);
    expect(value(s, "capstan_queue_depth", { agent: "a", tenant: "t1" })).toBe(2);
  });

  it("answers a scrape in bounded time when the queue query hangs", async () => {
    const m = createMetrics({ defaultMetrics: false });
    const hanging: Queryable = { query: () => new Promise(() => {}) };
    m.trackQueue(hanging, { ttlMs: 0, timeoutMs: 100 });
    // The query never settles: only the timeout can end the scrape, and it reports the stats down.
    const s = parseProm((await m.render()).body);
    expect(value(s, "capstan_queue_stats_up")).toBe(0);
  });
});

describe("instrumentFastify", () => {
  it("observes requests by route template, method and status", async () => {
    const m = createMetrics({ defaultMetrics: false });
    const app = Fastify();
    instrumentFastify(app, m);
    app.get("/v1/runs/:id", async () => ({ ok: true }));
    try {
      await app.inject({ method: "GET", url: "/v1/runs/abc" });
      await app.inject({ method: "GET", url: "/v1/runs/def?x=1" });
      await app.inject({ method: "GET", url: "/nope/123" });
      const s = parseProm((await m.render()).body);
      expect(
        value(s, "capstan_http_request_duration_seconds_count", {
          route: "/v1/runs/:id",
          method: "GET",
          status: "200",
        }),
      ).toBe(2);
      expect(
        value(s, "capstan_http_request_duration_seconds_count", {
          route: "unmatched",
          method: "GET",
          status: "404",
        }),
      ).toBe(1);
    } finally {
      await app.close();
    }
  });
});
