/**
 * A small cluster for the cost checks through real processes: a fresh
 * PostgreSQL database and Redis key prefix, the test OpenAI-compatible model
 * server (which counts what a provider would bill), an in-process ingress on
 * real HTTP (stateless: any replica is the same), and `capstan worker` child
 * processes loading test/fixtures/cost.config.ts. Nothing is mocked.
 */
import { resolveSettings } from "../../src/config/config.js";
import { createRedisCoordination } from "../../src/coord/redis/index.js";
import type { Coordination } from "../../src/coord/types.js";
import type { PriceTable } from "../../src/cost/pricing.js";
import { startIngress, type RunningIngress } from "../../src/ingress/server.js";
import { silentLogger } from "../../src/logger.js";
import { createApiKey, ensureTenant } from "../../src/state/tenants.js";
import { call, obj, type ApiAnswer, type Json } from "../ingress/harness.js";
import {
  startOpenAiTestServer,
  type OpenAiTestServer,
  type OpenAiTestServerOptions,
} from "../support/openai-server.js";
import { createTestDb, until, type TestDb } from "../support/pg.js";
import { killAll, spawnCapstan, type Proc } from "../support/procs.js";
import { deleteKeys, randomPrefix, REDIS_URL } from "../support/redis.js";

export const COST_AGENTS = ["limited", "budget", "cached", "tools"];
/** The price table of test/fixtures/cost.config.ts, given to the ingress as `capstan ingress` would. */
export const COST_PRICES: PriceTable = {
  "compatible:*": { inputPerMTok: 1, outputPerMTok: 4, cachedInputPerMTok: 0.5 },
};

export interface CostCluster {
  t: TestDb;
  prefix: string;
  model: OpenAiTestServer;
  api: RunningIngress;
  coord: Coordination;
  tenant: { id: string; key: string };
  /** Start a worker process (env adds to / overrides the defaults). */
  worker(env?: Record<string, string>): Proc;
  /** POST /v1/threads then POST /v1/threads/:id/runs; the raw answer of the second. */
  createRun(agent: string, input: string): Promise<ApiAnswer>;
  /** Long-poll GET /v1/runs/:id/wait until the run is terminal (or waiting). */
  settled(runId: string, timeoutMs?: number): Promise<Json>;
  get(path: string): Promise<ApiAnswer>;
  post(path: string, json: unknown): Promise<ApiAnswer>;
  /** The worker's ops URL (/metrics), from its log; the worker must log at info. */
  opsUrl(p: Proc): Promise<string>;
  close(): Promise<void>;
}

export async function startCostCluster(model: OpenAiTestServerOptions): Promise<CostCluster> {
  const t = await createTestDb();
  const prefix = randomPrefix();
  const server = await startOpenAiTestServer(model);
  const coord = createRedisCoordination({
    url: REDIS_URL,
    keyPrefix: prefix,
    logger: silentLogger(),
    events: { maxLen: 10_000, ttlMs: 600_000 },
  });
  const api = await startIngress({
    host: "127.0.0.1",
    port: 0,
    db: t.db,
    coord,
    settings: resolveSettings({}),
    logger: silentLogger(),
    agentNames: () => COST_AGENTS,
    prices: COST_PRICES,
    closeGraceMs: 1_000,
  });
  const ten = await ensureTenant(t.db, "cost");
  const { key } = await createApiKey(t.db, ten.id, "test");
  const procs: Proc[] = [];

  const post = (path: string, json: unknown) => call(api.url, "POST", path, { key, json });
  const get = (path: string) => call(api.url, "GET", path, { key });

  return {
    t,
    prefix,
    model: server,
    api,
    coord,
    tenant: { id: ten.id, key },
    worker(env = {}) {
      const p = spawnCapstan(["--config", "test/fixtures/cost.config.ts", "worker", "--no-migrate"], {
        DATABASE_URL: t.url,
        REDIS_URL,
        CAPSTAN_REDIS_PREFIX: prefix,
        MODEL_URL: server.url,
        CAPSTAN_LEASE_MS: "2000",
        CAPSTAN_POLL_MS: "100",
        CAPSTAN_SHUTDOWN_GRACE_MS: "300",
        ...env,
      });
      procs.push(p);
      return p;
    },
    async createRun(agent, input) {
      const th = await post("/v1/threads", {});
      if (th.status !== 201) throw new Error(`create thread: ${th.status} ${th.text}`);
      return post(`/v1/threads/${String(obj(th.body).id)}/runs`, { agent, input });
    },
    async settled(runId, timeoutMs = 60_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const r = await get(`/v1/runs/${runId}/wait?timeout=10`);
        if (r.status !== 200) throw new Error(`wait: ${r.status} ${r.text}`);
        const run = obj(r.body);
        if (["succeeded", "failed", "cancelled", "waiting"].includes(String(run.status))) return run;
        if (Date.now() > deadline) throw new Error(`run ${runId} still ${String(run.status)}`);
      }
    },
    get,
    post,
    async opsUrl(p) {
      const m = await until(
        () => /"url":"(http:\/\/[^"]+)"[^\n]*worker ops endpoints listening/.exec(p.output()),
        { timeoutMs: 30_000, what: "the worker's ops server" },
      );
      return m[1]!;
    },
    async close() {
      await killAll(procs);
      await api.close().catch(() => {});
      await coord.close().catch(() => {});
      await server.close().catch(() => {});
      await deleteKeys(prefix).catch(() => {});
      await t.drop();
    },
  };
}

/** Run ids of a batch of answers, failing loudly on anything but 202. */
export function runIds(answers: ApiAnswer[]): string[] {
  return answers.map((a) => {
    if (a.status !== 202) throw new Error(`create run: ${a.status} ${a.text}`);
    return String(obj(a.body).id);
  });
}
