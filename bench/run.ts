/**
 * `npm run bench`: Capstan's benchmarks, and its peers on the same workload
 * and machine, in one run (issue 6, deliverable 3). Not a test: it measures
 * and reports, and fails only when something could not be measured.
 *
 *   npm run bench                    # the full run (~6–7 min on 2 cores)
 *   BENCH_QUICK=1 npm run bench      # a ~1.5 min smoke run (results/quick-*.json, README untouched)
 *   BENCH_SKIP=peers,memory npm run bench
 *   BENCH_ONLY=coldstart npm run bench  # only these phases (results/only-*.json; latest.json untouched)
 *
 * It creates its own database `capstan_bench_<hex>` (and one per peer) on
 * the machine's PostgreSQL and a Redis key prefix of the same name, starts
 * the Capstan processes itself, and removes all of it at the end, on error
 * and on Ctrl-C. Writes bench/results/<date>.json and latest.json, and the
 * figures section of bench/README.md.
 */
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import { resolve } from "node:path";
import { pathToFileURL } from "node:url";
import pg from "pg";
import { Redis } from "ioredis";
import { callModel } from "../src/worker/model-call.js";
import { loadAgents } from "../src/cli/runtime.js";
import { defineConfig } from "../src/agent/define.js";
import { silentLogger } from "../src/logger.js";
import { CHANNELS } from "../src/state/channels.js";
import { createPgDb, type Db } from "../src/state/db.js";
import { migrate } from "../src/state/migrate.js";
import { enqueueRun } from "../src/state/scheduler.js";
import { createApiKey, ensureTenant, updateTenantLimits } from "../src/state/tenants.js";
import { createThread } from "../src/state/threads.js";
import type { CapstanClient } from "../src/client/index.js";
import { benchAgent } from "./capstan.bench.config.js";
import { loadConfig, type BenchConfig } from "./lib/config.js";
import { closedLoopHttp, converse, makeClient, type Conversation, type EventArrival } from "./lib/load.js";
import {
  cpuMsOf,
  freePort,
  killAllNow,
  killProcs,
  machineCpuMs,
  pidsByComm,
  ROOT,
  rssMiBOf,
  sleep,
  spawnCapstan,
  spawnNode,
  waitReady,
  type Proc,
} from "./lib/procs.js";
import { renderReadme } from "./lib/report.js";
import { nowMs, round, summarize, type Summary } from "./lib/stats.js";
import { LLM_STEPS_PER_RUN, STEPS_PER_RUN, userMessage } from "./workload.js";
import type { PeerResult } from "./peers/common.js";
import type { EntryOptions, System } from "./peers/entry.js";

/* ------------------------------------------------------------------ */
/* context                                                              */
/* ------------------------------------------------------------------ */

interface Ctx {
  cfg: BenchConfig;
  tag: string;
  dbName: string;
  dbUrl: string;
  /** Databases created by this run (dropped at the end). */
  databases: string[];
  redisPrefix: string;
  db: Db;
  stats: pg.Client;
  tenantId: string;
  apiKey: string;
  ingress: Proc;
  ingressUrl: string;
  client: CapstanClient;
}

const log = (msg: string): void => {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
};

function urlFor(adminUrl: string, database: string): string {
  const u = new URL(adminUrl);
  u.pathname = "/" + database;
  return u.toString();
}

async function adminQuery(cfg: BenchConfig, sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: cfg.adminUrl });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

async function createDatabase(cfg: BenchConfig, databases: string[], name: string): Promise<string> {
  await adminQuery(cfg, `CREATE DATABASE ${name}`);
  databases.push(name);
  return urlFor(cfg.adminUrl, name);
}

async function dropDatabases(cfg: BenchConfig, databases: string[]): Promise<void> {
  for (const name of databases.splice(0)) {
    await adminQuery(cfg, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch((err: unknown) =>
      log(`could not drop database ${name}: ${String(err)}`),
    );
  }
}

async function deleteRedisKeys(url: string, prefix: string): Promise<number> {
  const r = new Redis(url, { maxRetriesPerRequest: 1, connectTimeout: 2_000 });
  try {
    let cursor = "0";
    let removed = 0;
    do {
      const [next, keys] = await r.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
      cursor = next;
      if (keys.length > 0) removed += await r.unlink(...keys);
    } while (cursor !== "0");
    return removed;
  } finally {
    r.disconnect();
  }
}

/** Environment shared by every Capstan process of this run. */
function baseEnv(ctx: Pick<Ctx, "dbUrl" | "redisPrefix" | "cfg">): Record<string, string> {
  return {
    DATABASE_URL: ctx.dbUrl,
    REDIS_URL: ctx.cfg.redisUrl,
    CAPSTAN_REDIS_PREFIX: ctx.redisPrefix,
    CAPSTAN_LOG_LEVEL: "warn",
    CAPSTAN_DB_POOL_SIZE: String(ctx.cfg.poolSize),
  };
}

async function commits(ctx: Ctx, database = ctx.dbName): Promise<number> {
  const r = await ctx.stats.query<{ c: string }>(
    "SELECT xact_commit::text AS c FROM pg_stat_database WHERE datname = $1",
    [database],
  );
  return Number(r.rows[0]?.c ?? Number.NaN);
}

/* ------------------------------------------------------------------ */
/* workers                                                              */
/* ------------------------------------------------------------------ */

interface WorkerProc {
  proc: Proc;
  id: string;
  opsUrl: string;
}

interface WorkerOpts {
  modelDelayMs: number;
  concurrency?: number;
  leaseMs?: number;
  pollMs?: number;
  graceMs?: number;
}

let workerSeq = 0;

async function spawnWorker(ctx: Ctx, opts: WorkerOpts, id = `bench-w${++workerSeq}`): Promise<WorkerProc> {
  const opsPort = await freePort();
  const proc = spawnCapstan(id, ["worker", "--no-migrate"], {
    ...baseEnv(ctx),
    CAPSTAN_WORKER_ID: id,
    CAPSTAN_OPS_PORT: String(opsPort),
    BENCH_MODEL_DELAY_MS: String(opts.modelDelayMs),
    ...(opts.concurrency ? { CAPSTAN_WORKER_CONCURRENCY: String(opts.concurrency) } : {}),
    ...(opts.leaseMs ? { CAPSTAN_LEASE_MS: String(opts.leaseMs) } : {}),
    ...(opts.pollMs ? { CAPSTAN_POLL_MS: String(opts.pollMs) } : {}),
    ...(opts.graceMs !== undefined ? { CAPSTAN_SHUTDOWN_GRACE_MS: String(opts.graceMs) } : {}),
  });
  const opsUrl = `http://127.0.0.1:${opsPort}`;
  await waitReady(`${opsUrl}/readyz`, proc);
  return { proc, id, opsUrl };
}

async function startWorkers(ctx: Ctx, n: number, opts: WorkerOpts): Promise<WorkerProc[]> {
  return Promise.all(Array.from({ length: n }, () => spawnWorker(ctx, opts)));
}

/** SIGTERM (graceful), then SIGKILL after `ms`. */
async function stopProcs(procs: Proc[], ms = 15_000): Promise<void> {
  for (const p of procs) p.signal("SIGTERM");
  const timer = setTimeout(() => procs.forEach((p) => p.signal("SIGKILL")), ms);
  await Promise.all(procs.map((p) => p.exited));
  clearTimeout(timer);
}

/* ------------------------------------------------------------------ */
/* CPU accounting                                                       */
/* ------------------------------------------------------------------ */

interface CpuSnap {
  t: number;
  ingress: number;
  workers: number;
  postgres: Map<number, number>;
  redis: number;
  bench: number;
  machine: { busy: number; total: number };
  commits: number;
}

async function cpuSnap(ctx: Ctx, workers: WorkerProc[]): Promise<CpuSnap> {
  // Only the PostgreSQL backends serving this run's database: the server is shared.
  const backends = await ctx.stats.query<{ pid: number }>(
    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    [ctx.dbName],
  );
  const pgCpu = new Map<number, number>();
  for (const { pid } of backends.rows) pgCpu.set(pid, cpuMsOf(pid));
  const bench = process.cpuUsage();
  return {
    t: nowMs(),
    ingress: cpuMsOf(ctx.ingress.pid),
    workers: workers.reduce((s, w) => s + (cpuMsOf(w.proc.pid) || 0), 0),
    postgres: pgCpu,
    redis: pidsByComm("redis-server").reduce((s, pid) => s + (cpuMsOf(pid) || 0), 0),
    bench: (bench.user + bench.system) / 1000,
    machine: machineCpuMs(),
    commits: await commits(ctx),
  };
}

interface CpuReport {
  /** CPU milliseconds per run, by process group. */
  msPerRun: {
    ingress: number;
    workers: number;
    postgres: number;
    redis: number;
    benchClient: number;
    total: number;
  };
  /** Share of the machine's CPU that was busy in the window (all processes, 100 = both cores). */
  machineBusyPct: number;
  /** Share used by processes outside this benchmark (other users of the machine), approximate. */
  otherBusyPct: number;
  commitsPerRun: number;
  commitsPerSec: number;
}

function cpuReport(a: CpuSnap, b: CpuSnap, runs: number): CpuReport {
  let pgMs = 0;
  for (const [pid, end] of b.postgres) {
    if (Number.isNaN(end)) continue;
    const start = a.postgres.get(pid);
    pgMs += end - (start === undefined || Number.isNaN(start) ? 0 : start);
  }
  const groups = {
    ingress: b.ingress - a.ingress,
    workers: b.workers - a.workers,
    postgres: pgMs,
    redis: b.redis - a.redis,
    benchClient: b.bench - a.bench,
  };
  const ours = Object.values(groups).reduce((x, y) => x + y, 0);
  const busy = b.machine.busy - a.machine.busy;
  const total = b.machine.total - a.machine.total;
  const per = (v: number): number => round(runs ? v / runs : Number.NaN);
  const seconds = (b.t - a.t) / 1000;
  return {
    msPerRun: {
      ingress: per(groups.ingress),
      workers: per(groups.workers),
      postgres: per(groups.postgres),
      redis: per(groups.redis),
      benchClient: per(groups.benchClient),
      total: per(ours),
    },
    machineBusyPct: round((100 * busy) / total, 1),
    otherBusyPct: round(Math.max(0, (100 * (busy - ours)) / total), 1),
    commitsPerRun: round(runs ? (b.commits - a.commits) / runs : Number.NaN),
    commitsPerSec: round((b.commits - a.commits) / seconds),
  };
}

/* ------------------------------------------------------------------ */
/* latency helpers                                                      */
/* ------------------------------------------------------------------ */

const startedAt = (c: Conversation): EventArrival | undefined =>
  c.events.find((e) => e.type === "run.started");

function pickup(convs: Conversation[]): Summary {
  return summarize(convs.flatMap((c) => (startedAt(c) ? [startedAt(c)!.t - c.tAccepted] : [])));
}

/**
 * SSE delivery: receive time minus the event's `created_at` in run_events
 * (the start of the transaction that persisted it, so the commit is
 * included). Only events persisted after the client already received its
 * first event count: those were delivered live, not replayed on connect.
 */
async function sseDelivery(ctx: Ctx, convs: Conversation[], max = 1500): Promise<Summary> {
  const sample = convs.slice(0, max);
  if (sample.length === 0) return summarize([]);
  const r = await ctx.db.query<{ run_id: string; id: string; ms: string }>(
    `SELECT run_id, id::text AS id, (extract(epoch FROM created_at) * 1000)::text AS ms
     FROM run_events WHERE run_id = ANY($1::uuid[])`,
    [sample.map((c) => c.runId)],
  );
  const created = new Map(r.rows.map((x) => [`${x.run_id}:${x.id}`, Number(x.ms)]));
  const out: number[] = [];
  for (const c of sample) {
    const first = c.events[0]?.t;
    if (first === undefined) continue;
    for (const e of c.events) {
      const at = created.get(`${c.runId}:${e.id}`);
      if (at !== undefined && at > first) out.push(e.t - at);
    }
  }
  return summarize(out);
}

const stepsOf = (c: Conversation): number => c.events.filter((e) => e.type === "step.completed").length;

/* ------------------------------------------------------------------ */
/* phases                                                               */
/* ------------------------------------------------------------------ */

interface BaselineResult {
  clients: number;
  seconds: number;
  txPerSec: number;
  latencyMs: Summary;
  statement: string;
}

/** Raw small-transaction rate: `clients` connections each looping BEGIN; one small write; COMMIT. */
async function pgBaseline(ctx: Ctx, kind: "insert" | "update"): Promise<BaselineResult> {
  const { clients, ms } = ctx.cfg.baseline;
  const setup = new pg.Client({ connectionString: ctx.dbUrl });
  await setup.connect();
  await setup.query(
    `CREATE TABLE IF NOT EXISTS bench_baseline_rows (id bigserial PRIMARY KEY, client int NOT NULL,
       n int NOT NULL, payload jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now());
     CREATE TABLE IF NOT EXISTS bench_baseline_counters (client int PRIMARY KEY, n bigint NOT NULL,
       payload jsonb NOT NULL, at timestamptz NOT NULL DEFAULT now());`,
  );
  await setup.query(
    `INSERT INTO bench_baseline_counters (client, n, payload)
     SELECT g, 0, '{}' FROM generate_series(0, $1::int - 1) g ON CONFLICT DO NOTHING`,
    [clients],
  );
  await setup.end();
  const statement =
    kind === "insert"
      ? "INSERT INTO bench_baseline_rows (client, n, payload) VALUES ($1, $2, $3)"
      : "UPDATE bench_baseline_counters SET n = n + 1, payload = $3, at = now() WHERE client = $1 AND $2::int >= 0";
  const conns = await Promise.all(
    Array.from({ length: clients }, async () => {
      const c = new pg.Client({ connectionString: ctx.dbUrl, application_name: "bench-baseline" });
      await c.connect();
      return c;
    }),
  );
  const warmupEnd = nowMs() + 500;
  const end = warmupEnd + ms;
  const lat: number[] = [];
  let count = 0;
  try {
    await Promise.all(
      conns.map(async (c, i) => {
        let n = 0;
        while (nowMs() < end) {
          const t = nowMs();
          await c.query("BEGIN");
          await c.query(statement, [i, n++, JSON.stringify({ step: n, kind: "llm", ok: true })]);
          await c.query("COMMIT");
          const done = nowMs();
          if (t >= warmupEnd && done <= end) {
            count++;
            lat.push(done - t);
          }
        }
      }),
    );
  } finally {
    await Promise.all(conns.map((c) => c.end().catch(() => {})));
  }
  return {
    clients,
    seconds: ms / 1000,
    txPerSec: round(count / (ms / 1000), 1),
    latencyMs: summarize(lat),
    statement,
  };
}

async function modelClientCost(n: number): Promise<Summary> {
  const agent = loadAgents(defineConfig({ agents: [benchAgent(0)] }), {}).get("bench")!;
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = nowMs();
    await callModel({
      model: agent.model,
      system: agent.def.instructions,
      messages: [{ role: "user", content: userMessage(i) }],
      tools: agent.tools,
      signal: AbortSignal.timeout(10_000),
      onDelta: () => {},
      onRetry: () => {},
    });
    if (i >= 10) samples.push(nowMs() - t);
  }
  return summarize(samples);
}

/** Light load: one worker, one conversation at a time. */
async function lightPhase(ctx: Ctx) {
  const { runs, warmupRuns, modelCalls } = ctx.cfg.light;
  const workers = await startWorkers(ctx, 1, { modelDelayMs: 0 });
  try {
    for (let i = 0; i < warmupRuns; i++) await converse(ctx.client);
    const a = await cpuSnap(ctx, workers);
    const convs: Conversation[] = [];
    for (let i = 0; i < runs; i++) convs.push(await converse(ctx.client));
    // Back-to-back conversations: the statistics lag (≤ 1 s per backend) is the same at both ends.
    const b = await cpuSnap(ctx, workers);
    const r = await ctx.db.query<{ ms: string; steps: string }>(
      `SELECT (extract(epoch FROM finished_at - started_at) * 1000)::text AS ms,
              (SELECT count(*) FROM steps s WHERE s.run_id = runs.id)::text AS steps
       FROM runs WHERE id = ANY($1::uuid[]) AND status = 'succeeded'`,
      [convs.map((c) => c.runId)],
    );
    const failed = convs.filter((c) => c.status !== "succeeded").length;
    return {
      runs,
      failed,
      workers: 1,
      concurrency: 1,
      runLatencyMs: summarize(convs.map((c) => c.tDone - c.tAccepted)),
      pickupMs: pickup(convs),
      sseDeliveryMs: await sseDelivery(ctx, convs),
      /** Worker-side: claim → finish, divided by the run's steps (zero-delay model, trivial tools). */
      overheadPerStepMs: summarize(r.rows.map((x) => Number(x.ms) / Number(x.steps))),
      stepsPerRun: round(r.rows.reduce((s, x) => s + Number(x.steps), 0) / Math.max(1, r.rows.length)),
      /** One call of the zero-delay scripted model through AI SDK streamText, in the bench process. */
      modelClientCallMs: await modelClientCost(modelCalls),
      cpu: cpuReport(a, b, runs),
    };
  } finally {
    await stopProcs(workers.map((w) => w.proc));
  }
}

/** Throughput with 1 ingress + `n` workers, closed loop over HTTP. */
async function throughputPhase(
  ctx: Ctx,
  n: number,
  modelDelayMs: number,
  concurrency: number,
  warmupMs: number,
  measureMs: number,
) {
  const workers = await startWorkers(ctx, n, { modelDelayMs });
  let a: CpuSnap | undefined;
  let b: CpuSnap | undefined;
  try {
    const load = await closedLoopHttp(ctx.client, {
      concurrency,
      warmupMs,
      measureMs,
      onWindowStart: async () => {
        a = await cpuSnap(ctx, workers);
      },
      onWindowEnd: async () => {
        b = await cpuSnap(ctx, workers);
      },
    });
    const seconds = measureMs / 1000;
    const m = load.measured;
    const steps = m.reduce((s, c) => s + stepsOf(c), 0);
    return {
      workers: n,
      workerConcurrency: 50,
      modelDelayMs,
      concurrency,
      seconds,
      runs: m.length,
      failed: load.all.filter((c) => c.status !== "succeeded").length,
      errors: load.errors,
      ...(load.firstError ? { firstError: load.firstError } : {}),
      runsPerSec: round(m.length / seconds),
      stepsPerSec: round(steps / seconds),
      stepsPerRun: round(steps / Math.max(1, m.length)),
      // Latencies of the conversations that finished inside the window (steady state).
      runLatencyMs: summarize(m.map((c) => c.tDone - c.tAccepted)),
      pickupMs: pickup(m),
      sseDeliveryMs: await sseDelivery(ctx, m),
      cpu: a && b ? cpuReport(a, b, m.length) : undefined,
    };
  } finally {
    await stopProcs(workers.map((w) => w.proc));
  }
}

interface RecoveryTrial {
  kind: "sigkill" | "sigterm" | "sigterm-grace0";
  runs: number;
  /** Signal → first `run.started` from another worker, per run (ms). */
  recoveryMs: number[];
  succeeded: number;
}

/**
 * Recovery: worker A holds every run (B is stopped with SIGSTOP meanwhile),
 * then B is continued and A gets the signal; recovery is the time from the
 * signal to the `run.started` event of B for that run, as an SSE client sees it.
 */
async function recoveryPhase(ctx: Ctx) {
  const rc = ctx.cfg.recovery;
  const common = { modelDelayMs: rc.modelDelayMs, leaseMs: rc.leaseMs, pollMs: rc.pollMs };
  const b = await spawnWorker(ctx, { ...common, graceMs: 0 }, "bench-b");
  const trials: RecoveryTrial[] = [];
  const kinds: RecoveryTrial["kind"][] = [
    ...Array.from({ length: rc.killTrials }, () => "sigkill" as const),
    ...Array.from({ length: rc.termTrials }, () => "sigterm" as const),
    "sigterm-grace0",
  ];
  try {
    for (const [k, kind] of kinds.entries()) {
      const aId = `bench-a${k}`;
      b.proc.signal("SIGSTOP");
      const a = await spawnWorker(ctx, { ...common, graceMs: kind === "sigterm-grace0" ? 0 : 10_000 }, aId);
      try {
        const started = new Map<string, Array<{ worker: string; t: number }>>();
        const convs = Array.from({ length: rc.runsPerTrial }, () =>
          converse(ctx.client, {
            onEvent: (runId, e) => {
              if (e.type !== "run.started") return;
              const list = started.get(runId) ?? [];
              list.push({ worker: String(e.data.worker_id), t: e.t });
              started.set(runId, list);
            },
          }),
        );
        const all = Promise.all(convs);
        all.catch(() => {});
        // Every run started on A…
        const deadline = Date.now() + 30_000;
        while (
          [...started.values()].filter((l) => l.some((x) => x.worker === aId)).length < rc.runsPerTrial
        ) {
          if (Date.now() > deadline) throw new Error(`recovery: runs did not all start on ${aId}`);
          await sleep(20);
        }
        // …somewhere inside its first model call (1 s), at a random phase of the heartbeat.
        await sleep(100 + Math.random() * 600);
        b.proc.signal("SIGCONT");
        await sleep(50);
        const tSignal = nowMs();
        a.proc.signal(kind === "sigkill" ? "SIGKILL" : "SIGTERM");
        const done = await Promise.race([
          all,
          sleep(60_000).then(() => {
            throw new Error("recovery: runs did not finish within 60 s");
          }),
        ]);
        const recoveryMs = done.flatMap((c) => {
          const other = (started.get(c.runId) ?? []).find((x) => x.worker !== aId && x.t >= tSignal);
          return other ? [other.t - tSignal] : [];
        });
        trials.push({
          kind,
          runs: done.length,
          recoveryMs,
          succeeded: done.filter((c) => c.status === "succeeded").length,
        });
        log(`recovery ${kind}: median ${summarize(recoveryMs).median} ms over ${recoveryMs.length} runs`);
      } finally {
        a.proc.signal("SIGKILL");
        await a.proc.exited;
      }
    }
  } finally {
    b.proc.signal("SIGCONT");
    await stopProcs([b.proc], 5_000);
  }
  const by = (kind: RecoveryTrial["kind"]) => {
    const ts = trials.filter((t) => t.kind === kind);
    return {
      trials: ts.length,
      runs: ts.reduce((s, t) => s + t.runs, 0),
      recovered: ts.reduce((s, t) => s + t.recoveryMs.length, 0),
      succeeded: ts.reduce((s, t) => s + t.succeeded, 0),
      recoveryMs: summarize(ts.flatMap((t) => t.recoveryMs)),
    };
  };
  return {
    leaseMs: rc.leaseMs,
    heartbeatMs: Math.floor(rc.leaseMs / 3),
    reclaimSweepMs: rc.pollMs,
    modelDelayMs: rc.modelDelayMs,
    sigkill: by("sigkill"),
    sigterm: { graceMs: 10_000, ...by("sigterm") },
    sigtermGrace0: { graceMs: 0, ...by("sigterm-grace0") },
  };
}

/* ------------------------------------------------------------------ */
/* cold start                                                           */
/* ------------------------------------------------------------------ */

/** The user's config of the production-path samples: one agent on a real provider, one zod tool. */
function coldStartConfig(entry: string): string {
  return [
    `import { z } from "zod";`,
    `import { defineAgent, defineConfig, tool } from ${JSON.stringify(entry)};`,
    `const lookup = tool({`,
    `  description: "Look an order up",`,
    `  input: z.object({ orderId: z.string() }),`,
    `  effect: "pure",`,
    `  run: ({ orderId }) => ({ orderId, status: "shipped" }),`,
    `});`,
    `export default defineConfig({`,
    `  agents: [defineAgent({ name: "support", model: "openai:gpt-4o-mini", instructions: "Help.", tools: { lookup } })],`,
    `});`,
    ``,
  ].join("\n");
}

interface ColdStartVariant {
  /** How the worker is started. */
  command: string;
  /** Spawn → first 200 from /readyz (wall clock, ms). */
  readyMs: Summary;
  /** CPU time (user + system) of the process when it was ready: less sensitive to the machine's load than wall time. */
  cpuMs: Summary;
}

/**
 * Cold start: spawn → `/readyz` 200 of a fresh `capstan worker` (Redis and
 * PostgreSQL up, schema migrated, `--no-migrate` as the manifests run it).
 * A replacement worker adds this to recovery. Variants: the production path
 * (`node bin/capstan.js`, after `npm run build`) with a TypeScript config
 * (the documented `capstan.config.ts`, transpiled by jiti at every start)
 * and with a JavaScript one, and the source path the tests, the chaos suite
 * and the other phases use (`node --import tsx src/cli/main.ts`). Samples
 * alternate between the variants, so drifting load hits all alike.
 */
async function coldStartPhase(ctx: Ctx) {
  const n = ctx.cfg.coldStart.samples;
  const tBuild = nowMs();
  execFileSync("npm", ["run", "build"], { cwd: ROOT, stdio: "ignore" });
  const buildSeconds = round((nowMs() - tBuild) / 1000, 1);
  // A user's project: its config, and a node_modules where `zod` resolves.
  const dir = await mkdtemp(resolve(os.tmpdir(), "capstan-coldstart-"));
  await symlink(resolve(ROOT, "node_modules"), resolve(dir, "node_modules"), "dir");
  const entry = pathToFileURL(resolve(ROOT, "dist/index.js")).href;
  await writeFile(resolve(dir, "capstan.config.ts"), coldStartConfig(entry));
  await writeFile(resolve(dir, "capstan.config.mjs"), coldStartConfig(entry));
  const variants = {
    productionTs: { args: ["bin/capstan.js", "--config", resolve(dir, "capstan.config.ts")], tsx: false },
    productionJs: { args: ["bin/capstan.js", "--config", resolve(dir, "capstan.config.mjs")], tsx: false },
    tsx: { args: ["src/cli/main.ts", "--config", "bench/capstan.bench.config.ts"], tsx: true },
  };
  const samples: Record<keyof typeof variants, { ready: number[]; cpu: number[] }> = {
    productionTs: { ready: [], cpu: [] },
    productionJs: { ready: [], cpu: [] },
    tsx: { ready: [], cpu: [] },
  };
  const busyBefore = await busyPct(2_000);
  // The yardstick: an empty Node process, spawn → exit, in the same rounds (how slow the machine is now).
  const emptyNode: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const tEmpty = nowMs();
      await spawnNode("coldstart-empty-node", ["-e", ""], {}, { tsx: false }).exited;
      emptyNode.push(nowMs() - tEmpty);
      for (const [name, v] of Object.entries(variants) as [
        keyof typeof variants,
        (typeof variants)["tsx"],
      ][]) {
        const opsPort = await freePort();
        const t0 = nowMs();
        const proc = spawnNode(
          `coldstart-${name}`,
          [...v.args, "worker", "--no-migrate"],
          {
            ...baseEnv(ctx),
            CAPSTAN_OPS_PORT: String(opsPort),
            CAPSTAN_WORKER_ID: `bench-cold-${name}-${i}`,
          },
          { tsx: v.tsx },
        );
        try {
          await waitReady(`http://127.0.0.1:${opsPort}/readyz`, proc, 60_000, 10);
          samples[name].ready.push(nowMs() - t0);
          samples[name].cpu.push(cpuMsOf(proc.pid));
        } finally {
          await killProcs([proc]);
        }
      }
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  const variant = (name: keyof typeof variants): ColdStartVariant => ({
    command: `node ${variants[name].tsx ? "--import tsx " : ""}${variants[name].args
      .map((a) => a.replace(dir, "<tmp>"))
      .join(" ")} worker --no-migrate`,
    readyMs: summarize(samples[name].ready),
    cpuMs: summarize(samples[name].cpu),
  });
  const out = {
    samplesPerVariant: n,
    machineBusyPctBefore: busyBefore,
    /** `node -e ""`, spawn → exit: ~40 ms on a quiet machine; scale the figures by it. */
    emptyNodeMs: summarize(emptyNode),
    buildSeconds,
    productionTs: variant("productionTs"),
    productionJs: variant("productionJs"),
    tsx: variant("tsx"),
  };
  for (const name of Object.keys(variants) as (keyof typeof variants)[])
    log(
      `cold start ${name}: median ${out[name].readyMs.median} ms to ready, ${out[name].cpuMs.median} ms CPU`,
    );
  return out;
}

/** One in-process measurement in a child process; returns its results and how busy the machine was. */
async function inProcess(
  system: System,
  opts: EntryOptions[],
): Promise<{ results: PeerResult[]; machineBusyPct: number }> {
  const m0 = machineCpuMs();
  const p = spawnNode(`peer-${system}`, ["bench/peers/entry.ts", system, JSON.stringify(opts)], {
    BENCH_CHILD_TIMEOUT_MS: "150000",
    NODE_NO_WARNINGS: "1",
  });
  const { code } = await p.exited;
  const m1 = machineCpuMs();
  const line = p
    .output()
    .split("\n")
    .find((l) => l.startsWith("BENCH_RESULT "));
  if (code !== 0 || !line) throw new Error(`exit ${code}: ${p.output().slice(-3000)}`);
  return {
    results: JSON.parse(line.slice("BENCH_RESULT ".length)) as PeerResult[],
    machineBusyPct: round((100 * (m1.busy - m0.busy)) / (m1.total - m0.total), 1),
  };
}

interface PeerEntry {
  /** The better of the two concurrent rounds (the one least disturbed by other work). */
  concurrent: PeerResult;
  /** Runs/s of each concurrent round (forward order, then reverse order). */
  rounds: number[];
  sequential: PeerResult;
  machineBusyPct: number;
}

/**
 * In-process measurements in child processes: Capstan's worker and the
 * peers. The machine is shared, so the concurrent measurement is done in two
 * rounds, the second in reverse order, and the better round is reported.
 */
async function peersPhase(ctx: Ctx) {
  const pc = ctx.cfg.peers;
  const out: Record<string, PeerEntry | { error: string }> = {};
  const base = new Map<System, EntryOptions>();
  const systems = pc.systems as System[];
  for (const system of systems) {
    try {
      const url =
        system === "capstan"
          ? ctx.dbUrl
          : await createDatabase(
              ctx.cfg,
              ctx.databases,
              `${ctx.dbName}_${system.replace(/-.*/, "")}_${ctx.databases.length}`,
            );
      const opts: EntryOptions = {
        databaseUrl: url,
        poolSize: ctx.cfg.poolSize,
        concurrency: pc.concurrency,
        warmupMs: pc.warmupMs,
        measureMs: pc.measureMs,
        modelDelayMs: 0,
        redisUrl: ctx.cfg.redisUrl,
        redisPrefix: `${ctx.redisPrefix}inproc:`,
      };
      base.set(system, opts);
      const r = await inProcess(system, [
        opts,
        { ...opts, concurrency: 1, warmupMs: 500, measureMs: 60_000, maxRuns: pc.sequentialRuns },
      ]);
      const [concurrent, sequential] = r.results;
      out[system] = {
        concurrent: concurrent!,
        rounds: [concurrent!.runsPerSec],
        sequential: sequential!,
        machineBusyPct: r.machineBusyPct,
      };
      log(`${system}: ${round(concurrent!.runsPerSec)} runs/s at concurrency ${pc.concurrency}`);
    } catch (err) {
      out[system] = { error: err instanceof Error ? err.message : String(err) };
      log(`${system} failed: ${out[system].error.slice(0, 500)}`);
    }
  }
  if (pc.rounds > 1) {
    for (const system of [...systems].reverse()) {
      const entry = out[system];
      const opts = base.get(system);
      if (!entry || "error" in entry || !opts) continue;
      try {
        const r = await inProcess(system, [opts]);
        const again = r.results[0]!;
        entry.rounds.push(again.runsPerSec);
        if (again.runsPerSec > entry.concurrent.runsPerSec) {
          entry.concurrent = again;
          entry.machineBusyPct = r.machineBusyPct;
        }
        log(`${system}, round 2: ${round(again.runsPerSec)} runs/s`);
      } catch (err) {
        log(`${system}, round 2 failed: ${err instanceof Error ? err.message.slice(0, 300) : String(err)}`);
      }
    }
  }
  return {
    concurrency: pc.concurrency,
    measureMs: pc.measureMs,
    sequentialRuns: pc.sequentialRuns,
    rounds: pc.rounds,
    systems: out,
  };
}

/** A gauge of a process's Prometheus endpoint (e.g. `nodejs_heap_size_used_bytes`), or NaN. */
async function metricOf(opsUrl: string, name: string): Promise<number> {
  try {
    const res = await fetch(`${opsUrl}/metrics`, { signal: AbortSignal.timeout(5_000) });
    const text = await res.text();
    const line = text.split("\n").find((l) => l.startsWith(name + "{") || l.startsWith(name + " "));
    return line ? Number(line.slice(line.lastIndexOf(" ") + 1)) : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

interface MemorySample {
  t: number;
  inFlight: number;
  finished: number;
  rss: number[];
  heap: number[];
}

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

/**
 * One memory measurement: workers idle (RSS and V8 heap measured), then
 * `runs` runs enqueued while their tenant is capped at 1 running run, then
 * the cap is lifted and the workers claim them as fast as they can; each run
 * waits on a model call of `modelDelayMs`. Sampled every 250 ms until the
 * number in flight peaked (or reached `runs` and stayed there 3 s).
 */
async function memoryRun(ctx: Ctx, label: string, modelDelayMs: number, timeoutMs: number) {
  const mc = ctx.cfg.memory;
  const per = Math.ceil(mc.runs / mc.workers) + 10;
  const workers = await startWorkers(ctx, mc.workers, { modelDelayMs, concurrency: per });
  const tenant = await ensureTenant(ctx.db, `bench-memory-${label}-${ctx.tag}`);
  try {
    await updateTenantLimits(ctx.db, tenant.id, { maxConcurrency: 1, maxPending: mc.runs + 100 });
    await sleep(2_000);
    const rss = (): number[] => workers.map((w) => rssMiBOf(w.proc.pid));
    const heap = async (): Promise<number[]> =>
      (await Promise.all(workers.map((w) => metricOf(w.opsUrl, "nodejs_heap_size_used_bytes")))).map(
        (b) => b / 2 ** 20,
      );
    const idle = rss();
    const idleHeap = await heap();
    // Enqueue every run (the ingress's own transaction, called directly: faster than HTTP).
    const t0 = nowMs();
    let next = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < mc.runs) {
          const i = next++;
          const th = await createThread(ctx.db, tenant.id);
          await enqueueRun(ctx.db, {
            tenantId: tenant.id,
            threadId: th.id,
            agent: "bench",
            content: userMessage(i),
            maxAttempts: 3,
            defaultMaxPending: mc.runs + 100,
          });
        }
      }),
    );
    const enqueueSeconds = (nowMs() - t0) / 1000;
    await updateTenantLimits(ctx.db, tenant.id, { maxConcurrency: null });
    await ctx.db.query("SELECT pg_notify($1, '')", [CHANNELS.runs]);
    const tRelease = nowMs();
    const samples: MemorySample[] = [];
    let plateauSince: number | undefined;
    let bestAt = 0;
    let best = 0;
    while (nowMs() - tRelease < timeoutMs) {
      const r = await ctx.db.query<{ running: string; finished: string }>(
        `SELECT count(*) FILTER (WHERE status = 'running')::text AS running,
                count(*) FILTER (WHERE status IN ('succeeded', 'failed'))::text AS finished
         FROM runs WHERE tenant_id = $1`,
        [tenant.id],
      );
      const s: MemorySample = {
        t: nowMs() - tRelease,
        inFlight: Number(r.rows[0]!.running),
        finished: Number(r.rows[0]!.finished),
        rss: rss(),
        heap: await heap(),
      };
      samples.push(s);
      if (s.inFlight > best) {
        best = s.inFlight;
        bestAt = s.t;
      }
      // Every run in flight for 3 s: the plateau is measured.
      if (s.inFlight >= mc.runs) plateauSince ??= s.t;
      if (plateauSince !== undefined && s.t - plateauSince > 3_000) break;
      // Runs finish while the rest wait to be claimed: once no new peak for 5 s, it is behind us.
      if (s.finished >= mc.runs || (s.finished > 0 && s.t - bestAt > 5_000)) break;
      await sleep(250);
    }
    const outcomes = await ctx.db.query<{ status: string; n: string; error: string | null }>(
      `SELECT status, count(*)::text AS n, min(error->>'message') AS error FROM runs WHERE tenant_id = $1 GROUP BY status`,
      [tenant.id],
    );
    // The sample with the most runs in flight (the latest one of a plateau).
    const peak = samples.reduce((best, s) => (s.inFlight >= best.inFlight ? s : best), samples[0]!);
    const idleSum = sum(idle);
    const peakSum = sum(peak.rss);
    return {
      modelDelayMs,
      runs: mc.runs,
      workers: mc.workers,
      workerConcurrency: per,
      enqueueSeconds: round(enqueueSeconds),
      idleRssMiB: idle.map((v) => round(v, 1)),
      idleHeapUsedMiB: idleHeap.map((v) => round(v, 1)),
      peakInFlight: peak.inFlight,
      secondsToPeak: round(peak.t / 1000),
      finishedAtPeak: peak.finished,
      rssAtPeakMiB: peak.rss.map((v) => round(v, 1)),
      heapUsedAtPeakMiB: peak.heap.map((v) => round(v, 1)),
      maxRssSumMiB: round(Math.max(...samples.map((s) => sum(s.rss))), 1),
      /** (RSS of the workers at the peak − idle RSS) ÷ runs in flight at the peak. */
      kibPerInFlightRun: round(((peakSum - idleSum) * 1024) / Math.max(1, peak.inFlight), 1),
      /** Run statuses when sampling stopped (failed runs with their first error). */
      statusesAtEnd: Object.fromEntries(
        outcomes.rows.map((o) => [o.status, o.error ? `${o.n} (${o.error})` : Number(o.n)]),
      ),
      /** Same with V8's used heap (garbage not yet collected included). */
      heapKibPerInFlightRun: round(((sum(peak.heap) - sum(idleHeap)) * 1024) / Math.max(1, peak.inFlight), 1),
      samples: samples.map((s) => ({
        t: round(s.t / 1000),
        inFlight: s.inFlight,
        finished: s.finished,
        rssSumMiB: round(sum(s.rss), 1),
        heapSumMiB: round(sum(s.heap), 1),
      })),
    };
  } finally {
    await killProcs(workers.map((w) => w.proc));
    // Nothing must pick these runs up later: end them (the database is dropped at the end anyway).
    await ctx.db.query(
      `UPDATE runs SET status = 'cancelled', ready = false, lease_owner = NULL, lease_expires_at = NULL,
         finished_at = now() WHERE tenant_id = $1 AND status IN ('queued', 'running', 'waiting')`,
      [tenant.id],
    );
  }
}

/**
 * Memory per in-flight run, twice: with the 1 s model of the brief (runs
 * finish after ~3 s, so how many are in flight at once is bounded by how fast
 * workers claim), and with a model call long enough that every run is claimed
 * and waiting at once.
 */
async function memoryPhase(ctx: Ctx) {
  const mc = ctx.cfg.memory;
  const flow = await memoryRun(ctx, "flow", mc.modelDelayMs, Math.min(mc.timeoutMs, 30_000));
  log(
    `memory, ${mc.modelDelayMs} ms model: peak ${flow.peakInFlight} in flight, ${flow.kibPerInFlightRun} KiB/run`,
  );
  const hold = await memoryRun(ctx, "hold", mc.holdModelDelayMs, mc.timeoutMs);
  log(
    `memory, ${mc.holdModelDelayMs} ms model: peak ${hold.peakInFlight} in flight, ${hold.kibPerInFlightRun} KiB/run`,
  );
  return { flow, hold };
}

/* ------------------------------------------------------------------ */
/* machine                                                              */
/* ------------------------------------------------------------------ */

async function machineInfo(ctx: Ctx) {
  const v = await ctx.db.query<{ version: string; sc: string; fsync: string; sb: string; mc: string }>(
    `SELECT version() AS version, current_setting('synchronous_commit') AS sc, current_setting('fsync') AS fsync,
            current_setting('shared_buffers') AS sb, current_setting('max_connections') AS mc`,
  );
  const r = new Redis(ctx.cfg.redisUrl, { maxRetriesPerRequest: 1 });
  let redisVersion: string;
  try {
    const info = await r.info("server");
    redisVersion = /redis_version:(\S+)/.exec(info)?.[1] ?? "unknown";
  } finally {
    r.disconnect();
  }
  const row = v.rows[0]!;
  return {
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? "unknown",
    memoryGiB: round(os.totalmem() / 2 ** 30, 1),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    postgres: row.version.split(" on ")[0] ?? row.version,
    postgresSettings: {
      synchronous_commit: row.sc,
      fsync: row.fsync,
      shared_buffers: row.sb,
      max_connections: row.mc,
    },
    redis: redisVersion,
    loadAverageAtStart: os.loadavg().map((x) => round(x)),
  };
}

/** The code measured: the commit, and the files under src/ that differ from it (uncommitted work). */
function codeState(): { commit: string; uncommittedSrcFiles: string[] } {
  try {
    const git = (...args: string[]): string =>
      // Not trimmed at the start: porcelain lines begin with a status column that may be a space.
      execFileSync("git", args, { cwd: ROOT, encoding: "utf8" }).trimEnd();
    return {
      commit: git("rev-parse", "--short", "HEAD"),
      uncommittedSrcFiles: git("status", "--porcelain", "--", "src")
        .split("\n")
        .filter(Boolean)
        .map((l) => l.slice(3)),
    };
  } catch {
    return { commit: "unknown", uncommittedSrcFiles: [] };
  }
}

/** CPU busy share of the whole machine over `ms` (100 = every core busy). */
async function busyPct(ms: number): Promise<number> {
  const a = machineCpuMs();
  await sleep(ms);
  const b = machineCpuMs();
  return round((100 * (b.busy - a.busy)) / (b.total - a.total), 1);
}

/**
 * The machine is shared (PostgreSQL, Redis and other people's test runs):
 * wait up to `maxMs` for it to be quiet before measuring, and say how busy it was.
 */
async function waitQuiet(maxMs: number, threshold = 25): Promise<{ busyPct: number; waitedSeconds: number }> {
  const t0 = nowMs();
  for (;;) {
    const pct = await busyPct(3_000);
    const waited = round((nowMs() - t0) / 1000, 1);
    if (pct <= threshold || nowMs() - t0 >= maxMs) {
      if (pct > threshold) log(`the machine is still ${pct} % busy with other work; measuring anyway`);
      return { busyPct: pct, waitedSeconds: waited };
    }
    log(`the machine is ${pct} % busy with other work; waiting for it to quieten (up to ${maxMs / 1000} s)`);
    await sleep(5_000);
  }
}

/* ------------------------------------------------------------------ */
/* main                                                                 */
/* ------------------------------------------------------------------ */

export type ThroughputRow = Awaited<ReturnType<typeof throughputPhase>>;

export interface Results {
  when: string;
  quick: boolean;
  machine: Awaited<ReturnType<typeof machineInfo>> & {
    busyPctBeforeStart: number;
    waitedForQuietSeconds: number;
  };
  /** The code measured (the working tree is shared: uncommitted changes are listed). */
  code: ReturnType<typeof codeState>;
  workload: { description: string; stepsPerRun: number; llmStepsPerRun: number };
  settings: { poolSizePerProcess: number; workerConcurrency: number; ingress: number; config: BenchConfig };
  baseline?: { insert: BaselineResult; update: BaselineResult };
  light?: Awaited<ReturnType<typeof lightPhase>>;
  throughput?: ThroughputRow[];
  scaling?: ThroughputRow[];
  recovery?: Awaited<ReturnType<typeof recoveryPhase>>;
  coldStart?: Awaited<ReturnType<typeof coldStartPhase>>;
  peers?: Awaited<ReturnType<typeof peersPhase>>;
  memory?: Awaited<ReturnType<typeof memoryPhase>>;
  /** Phases that could not be measured, with the reason. */
  failures: Record<string, string>;
  durationSeconds?: number;
}

async function main(): Promise<void> {
  const cfg = loadConfig();
  const started = nowMs();
  const tag = randomBytes(4).toString("hex");
  const dbName = `capstan_bench_${tag}`;
  const databases: string[] = [];
  const redisPrefix = `${dbName}:`;
  let db: Db | undefined;
  let stats: pg.Client | undefined;
  let ingress: Proc | undefined;
  let cleaned: Promise<void> | undefined;

  const cleanup = (): Promise<void> =>
    (cleaned ??= (async () => {
      killAllNow();
      await db?.close().catch(() => {});
      await stats?.end().catch(() => {});
      await dropDatabases(cfg, databases);
      await deleteRedisKeys(cfg.redisUrl, redisPrefix).catch((err: unknown) =>
        log(`could not delete Redis keys ${redisPrefix}*: ${String(err)}`),
      );
    })());
  const onSignal = (sig: NodeJS.Signals): void => {
    log(`${sig}: cleaning up`);
    void cleanup().finally(() => process.exit(130));
  };
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  process.once("exit", killAllNow);

  try {
    log(`${cfg.quick ? "QUICK " : ""}run ${tag}: phases ${cfg.phases.join(", ")}`);
    const quiet = await waitQuiet(cfg.quietWaitMs);
    const dbUrl = await createDatabase(cfg, databases, dbName);
    db = createPgDb({ url: dbUrl, poolSize: 8, logger: silentLogger() });
    await migrate(db, silentLogger());
    stats = new pg.Client({ connectionString: dbUrl, application_name: "bench-stats" });
    await stats.connect();
    const tenant = await ensureTenant(db, "bench");
    const { key } = await createApiKey(db, tenant.id, "bench");
    const port = await freePort();
    ingress = spawnCapstan("ingress", ["ingress", "--no-migrate"], {
      ...baseEnv({ dbUrl, redisPrefix, cfg }),
      PORT: String(port),
      CAPSTAN_RATE_LIMIT_PER_MINUTE: "0",
    });
    const ingressUrl = `http://127.0.0.1:${port}`;
    await waitReady(`${ingressUrl}/readyz`, ingress);
    const ctx: Ctx = {
      cfg,
      tag,
      dbName,
      dbUrl,
      databases,
      redisPrefix,
      db,
      stats,
      tenantId: tenant.id,
      apiKey: key,
      ingress,
      ingressUrl,
      client: makeClient(ingressUrl, key),
    };

    const results: Results = {
      when: new Date().toISOString(),
      quick: cfg.quick,
      machine: {
        ...(await machineInfo(ctx)),
        busyPctBeforeStart: quiet.busyPct,
        waitedForQuietSeconds: quiet.waitedSeconds,
      },
      code: codeState(),
      workload: {
        description:
          "one conversation turn per run: 3 LLM steps (deterministic scripted model) and 2 tool calls (lookup: pure, charge: idempotent); a new thread per run",
        stepsPerRun: STEPS_PER_RUN,
        llmStepsPerRun: LLM_STEPS_PER_RUN,
      },
      settings: {
        poolSizePerProcess: cfg.poolSize,
        workerConcurrency: 50,
        ingress: 1,
        config: cfg,
      },
      failures: {},
    };
    const phase = async (name: string, fn: () => Promise<void>): Promise<void> => {
      const t = nowMs();
      log(`phase ${name}…`);
      try {
        await fn();
        log(`phase ${name} done in ${round((nowMs() - t) / 1000, 1)} s`);
      } catch (err) {
        // Reported, and the other phases still run; the exit code says a phase failed.
        results.failures[name] = err instanceof Error ? err.message : String(err);
        log(`phase ${name} FAILED after ${round((nowMs() - t) / 1000, 1)} s: ${results.failures[name]}`);
      }
    };
    const tp = cfg.throughput;
    const sc = cfg.scaling;
    if (cfg.phases.includes("baseline")) {
      await phase("baseline", async () => {
        results.baseline = {
          insert: await pgBaseline(ctx, "insert"),
          update: await pgBaseline(ctx, "update"),
        };
      });
    }
    if (cfg.phases.includes("light")) {
      await phase("light", async () => {
        results.light = await lightPhase(ctx);
      });
    }
    if (cfg.phases.includes("throughput")) {
      await phase("throughput", async () => {
        const rows: ThroughputRow[] = (results.throughput = []);
        for (const n of tp.workers) {
          rows.push(await throughputPhase(ctx, n, 0, tp.concurrency, tp.warmupMs, tp.measureMs));
          log(`  ${n} worker(s): ${rows.at(-1)!.runsPerSec} runs/s, ${rows.at(-1)!.failed} failed`);
        }
      });
    }
    if (cfg.phases.includes("scaling")) {
      await phase("scaling", async () => {
        const rows: ThroughputRow[] = (results.scaling = []);
        for (const n of sc.workers) {
          rows.push(
            await throughputPhase(ctx, n, sc.modelDelayMs, sc.concurrency, sc.warmupMs, sc.measureMs),
          );
          log(`  ${n} worker(s): ${rows.at(-1)!.runsPerSec} runs/s, ${rows.at(-1)!.failed} failed`);
        }
      });
    }
    if (cfg.phases.includes("recovery")) {
      await phase("recovery", async () => {
        results.recovery = await recoveryPhase(ctx);
      });
    }
    if (cfg.phases.includes("coldstart")) {
      await phase("coldstart", async () => {
        results.coldStart = await coldStartPhase(ctx);
      });
    }
    if (cfg.phases.includes("peers")) {
      await phase("peers", async () => {
        results.peers = await peersPhase(ctx);
      });
    }
    if (cfg.phases.includes("memory")) {
      await phase("memory", async () => {
        results.memory = await memoryPhase(ctx);
      });
    }

    results.durationSeconds = round((nowMs() - started) / 1000, 1);
    const dir = resolve(ROOT, "bench/results");
    await mkdir(dir, { recursive: true });
    const date = new Date().toISOString().slice(0, 10);
    const json = JSON.stringify(results, null, 2) + "\n";
    // A partial run (BENCH_ONLY) has its own file: latest.json and the README keep a whole run's figures.
    const file = cfg.partial
      ? `only-${cfg.phases.join("-")}-${cfg.quick ? "quick-" : ""}${date}.json`
      : cfg.quick
        ? `quick-${date}.json`
        : `${date}.json`;
    await writeFile(resolve(dir, file), json);
    if (!cfg.partial) await writeFile(resolve(dir, cfg.quick ? "latest-quick.json" : "latest.json"), json);
    log(`wrote bench/results/${file}`);
    if (!cfg.partial && (!cfg.quick || process.env.BENCH_README === "1")) {
      await renderReadme(resolve(ROOT, "bench/README.md"), results, `bench/results/${file}`);
      log("updated bench/README.md");
    }
    log(`done in ${results.durationSeconds} s`);
    if (Object.keys(results.failures).length > 0) {
      throw new Error(`phases failed: ${Object.keys(results.failures).join(", ")} (see the results file)`);
    }
  } finally {
    await cleanup();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    log(`failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
