/**
 * Benchmark sizes. Defaults finish in about 6–7 minutes on the 2-core machine;
 * BENCH_QUICK=1 shrinks everything to a smoke run of about 1.5 minutes. Each
 * size can be overridden by its own variable.
 */

const QUICK = process.env.BENCH_QUICK === "1";

function num(name: string, full: number, quick: number): number {
  const raw = process.env[name];
  if (raw !== undefined && raw !== "") {
    const v = Number(raw);
    if (!Number.isFinite(v) || v < 0) throw new Error(`${name} must be a non-negative number, got "${raw}"`);
    return v;
  }
  return QUICK ? quick : full;
}

function list(name: string, full: string[], quick: string[]): string[] {
  const raw = process.env[name];
  if (raw !== undefined && raw.trim() !== "")
    return raw
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean);
  return QUICK ? quick : full;
}

export const PHASES = [
  "baseline",
  "light",
  "throughput",
  "scaling",
  "recovery",
  "coldstart",
  "peers",
  "memory",
] as const;
export type Phase = (typeof PHASES)[number];

export function loadConfig() {
  const skip = new Set(list("BENCH_SKIP", [], []));
  // BENCH_ONLY=coldstart runs just those phases; its results go to their own file (see run.ts).
  const only = new Set(list("BENCH_ONLY", [], []));
  for (const [name, set] of [
    ["BENCH_SKIP", skip],
    ["BENCH_ONLY", only],
  ] as const) {
    for (const s of set) {
      if (!PHASES.includes(s as Phase))
        throw new Error(`${name}: unknown phase "${s}" (known: ${PHASES.join(", ")})`);
    }
  }
  const workers = list("BENCH_WORKERS", ["1", "2", "4"], ["1", "2"]).map(Number);
  const scalingWorkers = list("BENCH_WORKERS", ["1", "2", "4"], ["2"]).map(Number);
  return {
    quick: QUICK,
    phases: PHASES.filter((p) => !skip.has(p) && (only.size === 0 || only.has(p))),
    /** Only some phases (BENCH_ONLY): the results must not replace latest.json or the README figures. */
    partial: only.size > 0,
    adminUrl: process.env.BENCH_ADMIN_URL ?? "postgres://postgres@127.0.0.1:5432/postgres",
    redisUrl: process.env.BENCH_REDIS_URL ?? "redis://127.0.0.1:6379",
    /** How long to wait (at most) for the shared machine to be quiet (< 25 % CPU busy) before measuring. */
    quietWaitMs: num("BENCH_QUIET_WAIT_MS", 60_000, 0),
    /** Capstan's default pool size per process; the baseline and the peers use as many connections. */
    poolSize: num("BENCH_POOL_SIZE", 10, 10),
    baseline: { clients: num("BENCH_BASELINE_CLIENTS", 10, 10), ms: num("BENCH_BASELINE_MS", 6_000, 1_500) },
    light: {
      runs: num("BENCH_LIGHT_RUNS", 100, 15),
      warmupRuns: 10,
      modelCalls: num("BENCH_MODEL_CALLS", 300, 50),
    },
    throughput: {
      workers,
      concurrency: num("BENCH_CONCURRENCY", 64, 32),
      warmupMs: num("BENCH_WARMUP_MS", 3_000, 1_500),
      measureMs: num("BENCH_MEASURE_MS", 12_000, 3_000),
    },
    scaling: {
      workers: scalingWorkers,
      modelDelayMs: 200,
      concurrency: num("BENCH_SCALING_CONCURRENCY", 200, 100),
      warmupMs: num("BENCH_WARMUP_MS", 3_000, 1_500),
      measureMs: num("BENCH_MEASURE_MS", 12_000, 3_000),
    },
    recovery: {
      leaseMs: num("BENCH_LEASE_MS", 2_000, 2_000),
      pollMs: num("BENCH_RECOVERY_POLL_MS", 500, 500),
      runsPerTrial: num("BENCH_RECOVERY_RUNS", 10, 3),
      killTrials: num("BENCH_KILL_TRIALS", 3, 1),
      termTrials: num("BENCH_TERM_TRIALS", 2, 1),
      modelDelayMs: 1_000,
    },
    coldStart: {
      /** Fresh worker processes per variant (production path with a .ts and a .mjs config, tsx path). */
      samples: num("BENCH_COLDSTART_SAMPLES", 10, 3),
    },
    peers: {
      systems: list(
        "BENCH_PEERS",
        ["capstan", "langgraph-sync", "langgraph-async", "dbos"],
        ["capstan", "langgraph-sync", "dbos"],
      ),
      concurrency: num("BENCH_PEER_CONCURRENCY", 50, 50),
      warmupMs: num("BENCH_PEER_WARMUP_MS", 3_000, 1_000),
      measureMs: num("BENCH_PEER_MEASURE_MS", 8_000, 2_000),
      /** Concurrent measurements per system (the second round in reverse order; the better one is reported). */
      rounds: num("BENCH_PEER_ROUNDS", 2, 1),
      sequentialRuns: num("BENCH_PEER_SEQUENTIAL_RUNS", 60, 10),
    },
    memory: {
      runs: num("BENCH_MEMORY_RUNS", 5_000, 300),
      workers: num("BENCH_MEMORY_WORKERS", 2, 2),
      modelDelayMs: 1_000,
      /** A model call long enough that every run is claimed and waiting at once. */
      holdModelDelayMs: 120_000,
      timeoutMs: num("BENCH_MEMORY_TIMEOUT_MS", 90_000, 15_000),
    },
  };
}

export type BenchConfig = ReturnType<typeof loadConfig>;
