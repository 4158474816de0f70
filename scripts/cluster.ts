/**
 * A local Capstan cluster: N ingress and M worker processes (real child
 * processes of `capstan ingress|worker`, run from source) against one
 * PostgreSQL and one Redis, with a round-robin load balancer in front.
 *
 *   npm run cluster -- --ingress 2 --workers 3 [--port 7080] [--config capstan.config.ts]
 *
 * DATABASE_URL defaults to postgres://postgres@127.0.0.1:5432/capstan_cluster
 * (the database is created if absent and migrated), REDIS_URL to
 * redis://127.0.0.1:6379 with the key prefix `capstan:cluster:`. It prints the
 * load balancer's URL and a fresh API key, restarts nothing by itself, and on
 * SIGINT/SIGTERM stops every child (SIGTERM, then SIGKILL after a bound).
 *
 * `startCluster()` is the same thing as a library, used by the chaos suite:
 * it adds killing, stopping and restarting single processes.
 */
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { isAbsolute, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import pg from "pg";
import { silentLogger } from "../src/logger.js";
import { createPgDb } from "../src/state/db.js";
import { migrate } from "../src/state/migrate.js";
import { createApiKey, ensureTenant } from "../src/state/tenants.js";
import { ROOT, spawnCapstan, type Proc } from "../test/support/procs.js";
import { startLbProxy, type LbProxy } from "./lb-proxy.js";

export const DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/capstan_cluster";
export const DEFAULT_REDIS_URL = "redis://127.0.0.1:6379";
export const DEFAULT_REDIS_PREFIX = "capstan:cluster:";
/** Agents used when no config is given and the working directory has none. */
export const FALLBACK_CONFIG = resolve(ROOT, "test/fixtures/chaos.config.ts");

export type Role = "ingress" | "worker";

export interface ClusterOptions {
  /** Ingress processes (default 2). */
  ingress?: number;
  /** Worker processes (default 3). */
  workers?: number;
  databaseUrl?: string;
  redisUrl?: string;
  redisPrefix?: string;
  /** Agent config file (relative to the current directory). Default: capstan.config.* here, else FALLBACK_CONFIG. */
  config?: string;
  /** Load balancer port (default 0: any free port). */
  lbPort?: number;
  /** Tenant of the API key created at start (default "cluster"). */
  tenant?: string;
  /** Extra environment of every child (e.g. CAPSTAN_LEASE_MS, EFFECTS_URL). */
  env?: Record<string, string>;
  /** Pass this process's environment to the children too (the CLI does; tests do not). */
  inheritEnv?: boolean;
  /** CAPSTAN_LOG_LEVEL of the children (default "warn"). */
  logLevel?: string;
  /** SIGTERM → SIGKILL bound when stopping a process (default 10,000 ms). */
  stopGraceMs?: number;
  /** How long a (re)started process may take to become ready (default 60,000 ms). */
  readyTimeoutMs?: number;
  /** Every line a child writes (the CLI prints them). */
  onOutput?: (name: string, line: string) => void;
  /** A child exited (for whatever reason). */
  onExit?: (
    name: string,
    exit: { code: number | null; signal: NodeJS.Signals | null },
    pid: number | undefined,
  ) => void;
}

export interface ProcessLog {
  name: string;
  role: Role;
  pid: number | undefined;
  alive: boolean;
  exit: string | undefined;
  output: string;
}

export interface Cluster {
  /** The load balancer. */
  url: string;
  /** Each ingress directly (stable across restarts: same port). */
  ingressUrls: string[];
  /** Each worker's ops endpoints (/healthz, /readyz, /metrics). */
  workerOpsUrls: string[];
  apiKey: string;
  tenantId: string;
  databaseUrl: string;
  redisUrl: string;
  redisPrefix: string;
  config: string;
  lb: LbProxy;
  /** The current process of each slot (replaced in place by restarts). */
  ingresses: Proc[];
  workers: Proc[];
  /** Send a signal; for SIGKILL/SIGTERM/SIGINT resolve once it exited (SIGTERM: SIGKILL after the grace). */
  killWorker(i: number, signal?: NodeJS.Signals): Promise<void>;
  killIngress(i: number, signal?: NodeJS.Signals): Promise<void>;
  /** Stop the slot's process if alive (SIGTERM, bounded), start a new one on the same port, wait until ready. */
  restartWorker(i: number): Promise<Proc>;
  restartIngress(i: number): Promise<Proc>;
  alive(role: Role, i: number): boolean;
  /** Every process started (current ones and the last exited ones), with the tail of its output. */
  logs(tailChars?: number): ProcessLog[];
  /** SIGTERM every child, SIGKILL what is left after the grace, close the load balancer. Idempotent. */
  stop(): Promise<void>;
}

/** A free TCP port on 127.0.0.1 (bound then released; the caller binds it right after). */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => resolvePort(port));
    });
  });
}

/** Create the URL's database if it does not exist (connects to `postgres` on the same server). */
export async function ensureDatabase(url: string): Promise<void> {
  const u = new URL(url);
  const name = decodeURIComponent(u.pathname.replace(/^\//, "")) || "postgres";
  const admin = new URL(url);
  admin.pathname = "/postgres";
  const c = new pg.Client({ connectionString: admin.toString(), connectionTimeoutMillis: 10_000 });
  await c.connect();
  try {
    const r = await c.query("SELECT 1 FROM pg_database WHERE datname = $1", [name]);
    if (r.rowCount === 0) {
      try {
        await c.query(`CREATE DATABASE "${name.replace(/"/g, '""')}"`);
      } catch (err) {
        // Created concurrently by someone else: fine.
        if ((err as { code?: string }).code !== "42P04") throw err;
      }
    }
  } finally {
    await c.end();
  }
}

/** A URL without its password, for printing. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return url;
  }
}

function defaultConfig(): string {
  for (const f of ["capstan.config.ts", "capstan.config.mts", "capstan.config.js", "capstan.config.mjs"]) {
    const p = resolve(process.cwd(), f);
    if (existsSync(p)) return p;
  }
  return FALLBACK_CONFIG;
}

const isRunning = (p: Proc): boolean => p.child.exitCode === null && p.child.signalCode === null;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Slot {
  role: Role;
  index: number;
  port: number;
  generation: number;
  proc: Proc | undefined;
}

interface Started {
  name: string;
  role: Role;
  proc: Proc;
}

/** Keep at most this many exited processes' outputs (each output is itself bounded by spawnCapstan). */
const MAX_EXITED_LOGS = 24;

export async function startCluster(opts: ClusterOptions = {}): Promise<Cluster> {
  const nIngress = opts.ingress ?? 2;
  const nWorkers = opts.workers ?? 3;
  if (!Number.isInteger(nIngress) || nIngress < 1) throw new Error("a cluster needs at least 1 ingress");
  if (!Number.isInteger(nWorkers) || nWorkers < 0) throw new Error("workers must be a non-negative integer");
  const databaseUrl = opts.databaseUrl ?? DEFAULT_DATABASE_URL;
  const redisUrl = opts.redisUrl ?? DEFAULT_REDIS_URL;
  const redisPrefix = opts.redisPrefix ?? DEFAULT_REDIS_PREFIX;
  const config = opts.config
    ? isAbsolute(opts.config)
      ? opts.config
      : resolve(process.cwd(), opts.config)
    : defaultConfig();
  if (!existsSync(config)) throw new Error(`config file not found: ${config}`);
  const stopGraceMs = opts.stopGraceMs ?? 10_000;
  const readyTimeoutMs = opts.readyTimeoutMs ?? 60_000;

  // Schema and an API key, once, from this process.
  await ensureDatabase(databaseUrl);
  const db = createPgDb({
    url: databaseUrl,
    poolSize: 2,
    logger: silentLogger(),
    applicationName: "capstan-cluster",
  });
  let apiKey: string;
  let tenantId: string;
  try {
    await migrate(db, silentLogger());
    const tenant = await ensureTenant(db, opts.tenant ?? "cluster");
    tenantId = tenant.id;
    apiKey = (await createApiKey(db, tenant.id, "cluster launcher")).key;
  } finally {
    await db.close();
  }

  const baseEnv: Record<string, string | undefined> = {
    ...(opts.inheritEnv ? process.env : {}),
    DATABASE_URL: databaseUrl,
    REDIS_URL: redisUrl,
    CAPSTAN_REDIS_PREFIX: redisPrefix,
    CAPSTAN_LOG_LEVEL: opts.logLevel ?? "warn",
    HOST: "127.0.0.1",
    ...opts.env,
  };

  const slots: Record<Role, Slot[]> = { ingress: [], worker: [] };
  for (let i = 0; i < nIngress; i++)
    slots.ingress.push({ role: "ingress", index: i, port: await freePort(), generation: 0, proc: undefined });
  for (let i = 0; i < nWorkers; i++)
    slots.worker.push({ role: "worker", index: i, port: await freePort(), generation: 0, proc: undefined });

  const started: Started[] = [];
  const ingresses: Proc[] = [];
  const workers: Proc[] = [];
  const urlOf = (s: Slot) => `http://127.0.0.1:${s.port}`;
  const nameOf = (s: Slot) => `${s.role}-${s.index + 1}${s.generation > 1 ? `.${s.generation}` : ""}`;
  let stopping: Promise<void> | undefined;

  const forget = () => {
    const exited = started.filter((s) => !isRunning(s.proc));
    for (const s of exited.slice(0, Math.max(0, exited.length - MAX_EXITED_LOGS))) {
      started.splice(started.indexOf(s), 1);
    }
  };

  const spawnSlot = (s: Slot): Proc => {
    s.generation++;
    const name = nameOf(s);
    const env: Record<string, string | undefined> =
      s.role === "ingress"
        ? { ...baseEnv, PORT: String(s.port) }
        : { ...baseEnv, CAPSTAN_OPS_PORT: String(s.port), CAPSTAN_WORKER_ID: name };
    const proc = spawnCapstan(["--config", config, s.role, "--no-migrate"], env);
    s.proc = proc;
    (s.role === "ingress" ? ingresses : workers)[s.index] = proc;
    forget();
    started.push({ name, role: s.role, proc });
    if (opts.onOutput) {
      const onOutput = opts.onOutput;
      let partial = "";
      const onData = (d: Buffer) => {
        partial += d.toString();
        const lines = partial.split("\n");
        partial = lines.pop() ?? "";
        if (partial.length > 64_000) partial = partial.slice(-64_000); // bounded: a line without end
        for (const line of lines) if (line) onOutput(name, line);
      };
      proc.child.stdout?.on("data", onData);
      proc.child.stderr?.on("data", onData);
    }
    void proc.exited.then((exit) => opts.onExit?.(name, exit, proc.child.pid));
    return proc;
  };

  const waitReady = async (s: Slot, proc: Proc): Promise<void> => {
    const deadline = Date.now() + readyTimeoutMs;
    for (;;) {
      if (!isRunning(proc)) {
        const { code, signal } = await proc.exited;
        throw new Error(
          `${nameOf(s)} exited (${signal ?? `code ${code}`}) before it was ready:\n${proc.output().slice(-4_000)}`,
        );
      }
      try {
        const res = await fetch(`${urlOf(s)}/readyz`, { signal: AbortSignal.timeout(2_000) });
        await res.body?.cancel();
        if (res.status === 200) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        throw new Error(
          `${nameOf(s)} was not ready within ${readyTimeoutMs} ms:\n${proc.output().slice(-4_000)}`,
        );
      }
      await sleep(100);
    }
  };

  /** Terminate one process: SIGTERM (continuing it if stopped), SIGKILL after the grace. */
  const terminate = async (proc: Proc, graceMs = stopGraceMs): Promise<void> => {
    if (!isRunning(proc)) return;
    proc.kill("SIGTERM");
    proc.kill("SIGCONT"); // a SIGSTOPped process handles SIGTERM only once continued
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      proc.exited.then(() => false),
      new Promise<boolean>((r) => (timer = setTimeout(() => r(true), graceMs))),
    ]);
    clearTimeout(timer);
    if (timedOut) proc.kill("SIGKILL");
    await proc.exited;
  };

  const signalSlot = async (s: Slot | undefined, signal: NodeJS.Signals): Promise<void> => {
    if (!s) throw new Error("no such process slot");
    const proc = s.proc;
    if (!proc || !isRunning(proc)) return;
    if (signal === "SIGTERM") return terminate(proc);
    proc.kill(signal);
    if (signal === "SIGKILL" || signal === "SIGINT") await proc.exited;
  };

  const restartSlot = async (s: Slot | undefined): Promise<Proc> => {
    if (!s) throw new Error("no such process slot");
    if (stopping) throw new Error("the cluster is stopping");
    if (s.proc) await terminate(s.proc);
    const proc = spawnSlot(s);
    await waitReady(s, proc);
    return proc;
  };

  const all = [...slots.ingress, ...slots.worker];
  let lb: LbProxy | undefined;
  try {
    // Workers first: with several processes migrating nothing (done above), order only matters for logs.
    await Promise.all(
      all.map(async (s) => {
        const proc = spawnSlot(s);
        await waitReady(s, proc);
      }),
    );
    lb = await startLbProxy({ backends: slots.ingress.map(urlOf), port: opts.lbPort ?? 0 });
  } catch (err) {
    await Promise.all(
      all.map(async (s) => {
        if (s.proc) await terminate(s.proc, 2_000);
      }),
    );
    throw err;
  }
  const proxy = lb;

  return {
    url: proxy.url,
    ingressUrls: slots.ingress.map(urlOf),
    workerOpsUrls: slots.worker.map(urlOf),
    apiKey,
    tenantId,
    databaseUrl,
    redisUrl,
    redisPrefix,
    config,
    lb: proxy,
    ingresses,
    workers,
    killWorker: (i, signal = "SIGKILL") => signalSlot(slots.worker[i], signal),
    killIngress: (i, signal = "SIGKILL") => signalSlot(slots.ingress[i], signal),
    restartWorker: (i) => restartSlot(slots.worker[i]),
    restartIngress: (i) => restartSlot(slots.ingress[i]),
    alive: (role, i) => {
      const p = slots[role][i]?.proc;
      return p !== undefined && isRunning(p);
    },
    logs: (tailChars = 4_000) =>
      started.map((s) => ({
        name: s.name,
        role: s.role,
        pid: s.proc.child.pid,
        alive: isRunning(s.proc),
        exit: isRunning(s.proc)
          ? undefined
          : (s.proc.child.signalCode ?? `code ${String(s.proc.child.exitCode)}`),
        output: s.proc.output().slice(-tailChars),
      })),
    stop() {
      stopping ??= (async () => {
        await Promise.all(started.map((s) => terminate(s.proc)));
        await proxy.close();
      })();
      return stopping;
    },
  };
}

/* --------------------------------- CLI ---------------------------------- */

const USAGE = `usage: npm run cluster -- [--ingress N] [--workers M] [--port P] [--config FILE]
                          [--database-url URL] [--redis-url URL] [--redis-prefix P]
                          [--tenant NAME] [--log-level LEVEL] [--stop-grace-ms MS]

Starts N ingress (default 2) and M worker (default 3) processes and a round-robin
load balancer on 127.0.0.1:P (default 7080). DATABASE_URL / REDIS_URL are read from
the environment when the flags are absent (defaults: ${DEFAULT_DATABASE_URL},
${DEFAULT_REDIS_URL} with prefix ${DEFAULT_REDIS_PREFIX}). Ctrl-C stops everything.`;

function intArg(name: string, v: string | undefined, def: number, min: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    process.stderr.write(`cluster: ${name} must be an integer ≥ ${min}, got "${v}"\n\n${USAGE}\n`);
    process.exit(2);
  }
  return n;
}

async function cli(argv: string[]): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        ingress: { type: "string" },
        workers: { type: "string" },
        port: { type: "string" },
        config: { type: "string", short: "c" },
        "database-url": { type: "string" },
        "redis-url": { type: "string" },
        "redis-prefix": { type: "string" },
        tenant: { type: "string" },
        "log-level": { type: "string" },
        "stop-grace-ms": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
    }));
  } catch (err) {
    process.stderr.write(`cluster: ${err instanceof Error ? err.message : String(err)}\n\n${USAGE}\n`);
    process.exit(2);
  }
  if (values.help) {
    process.stdout.write(USAGE + "\n");
    return;
  }
  const ingress = intArg("--ingress", values.ingress, 2, 1);
  const workers = intArg("--workers", values.workers, 3, 0);
  const port = intArg("--port", values.port, 7080, 0);
  const stopGraceMs = intArg("--stop-grace-ms", values["stop-grace-ms"], 10_000, 0);
  const width = 10;
  const say = (s: string) => process.stdout.write(s + "\n");

  let stopping = false;
  say(`starting ${ingress} ingress and ${workers} worker processes…`);
  const cluster = await startCluster({
    ingress,
    workers,
    lbPort: port,
    databaseUrl: values["database-url"] ?? process.env.DATABASE_URL ?? DEFAULT_DATABASE_URL,
    redisUrl: values["redis-url"] ?? process.env.REDIS_URL ?? DEFAULT_REDIS_URL,
    redisPrefix: values["redis-prefix"] ?? process.env.CAPSTAN_REDIS_PREFIX ?? DEFAULT_REDIS_PREFIX,
    ...(values.config ? { config: values.config } : {}),
    ...(values.tenant ? { tenant: values.tenant } : {}),
    logLevel: values["log-level"] ?? process.env.CAPSTAN_LOG_LEVEL ?? "warn",
    stopGraceMs,
    inheritEnv: true,
    onOutput: (name, line) => process.stdout.write(`[${name.padEnd(width)}] ${line}\n`),
    onExit: (name, { code, signal }) => {
      if (!stopping)
        process.stdout.write(`[${name.padEnd(width)}] exited (${signal ?? `code ${code}`}); not restarted\n`);
    },
  });
  say("");
  say(`Capstan cluster: ${ingress} ingress, ${workers} workers`);
  say(`  load balancer  ${cluster.url}   (round-robin, no stickiness)`);
  cluster.ingressUrls.forEach((u, i) => say(`  ingress-${i + 1}      ${u}`));
  cluster.workerOpsUrls.forEach((u, i) => say(`  worker-${i + 1}       ${u}/readyz (ops)`));
  say(`  database       ${redact(cluster.databaseUrl)}`);
  say(`  redis          ${redact(cluster.redisUrl)}  prefix ${cluster.redisPrefix}`);
  say(`  agents         ${cluster.config}`);
  say(`  api key        ${cluster.apiKey}`);
  say("");
  say("try:");
  say(
    `  curl -s -X POST ${cluster.url}/v1/threads -H 'authorization: Bearer ${cluster.apiKey}' ` +
      `-H 'content-type: application/json' -d '{}'`,
  );
  say("Ctrl-C stops every process.");

  await new Promise<void>((done) => {
    const on = (sig: NodeJS.Signals) => {
      process.removeListener("SIGINT", on);
      process.removeListener("SIGTERM", on);
      // A second signal: kill everything at once.
      const force = () => {
        for (const p of [...cluster.ingresses, ...cluster.workers]) {
          p.kill("SIGCONT");
          p.kill("SIGKILL");
        }
        process.exit(130);
      };
      process.once("SIGINT", force);
      process.once("SIGTERM", force);
      stopping = true;
      say(`\n${sig}: stopping every process (SIGTERM, SIGKILL after ${stopGraceMs} ms)…`);
      void cluster.stop().then(() => {
        say("stopped");
        done();
      });
    };
    process.on("SIGINT", on);
    process.on("SIGTERM", on);
  });
}

const isEntry = process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;
if (isEntry) {
  cli(process.argv.slice(2)).then(
    () => process.exit(0),
    (err: unknown) => {
      process.stderr.write(`cluster: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
