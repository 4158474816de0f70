/**
 * The in-process closed-loop driver shared by the peers (and by the
 * in-process Capstan variant): `concurrency` loops each run one conversation
 * after another; conversations finishing during the warm-up are not counted.
 */
import { nowMs, summarize, type Summary } from "../lib/stats.js";

export interface PeerOptions {
  databaseUrl: string;
  /** PostgreSQL connections the system may use (Capstan's pool size). */
  poolSize: number;
  /** Conversations in flight at once. */
  concurrency: number;
  warmupMs: number;
  measureMs: number;
  /** Time each model call takes. */
  modelDelayMs: number;
  /** Stop after this many measured conversations even if time remains (0: no cap). */
  maxRuns?: number;
  /** Called at the start and the end of the measuring window (commit counters). */
  onWindow?: (edge: "start" | "end") => void;
}

export interface PeerResult {
  runs: number;
  steps: number;
  seconds: number;
  runsPerSec: number;
  stepsPerSec: number;
  /** Wall time of one conversation (ms). */
  runLatency: Summary;
  /** Wall time of one conversation divided by its steps (ms). */
  perStep: Summary;
  errors: number;
  firstError?: string;
  /** CPU time of this process per conversation (ms, user + system). */
  cpuMsPerRun: number;
  /** Peak RSS of this process (MiB). */
  maxRssMiB: number;
  /** PostgreSQL commits in the database per conversation (from pg_stat_database), when measured. */
  commitsPerRun?: number;
  /** Transactions per conversation counted on the client (COMMITs + autocommit statements), when measured. */
  transactionsPerRun?: number;
  /** SQL statements sent per conversation (BEGIN and COMMIT included), when measured. */
  statementsPerRun?: number;
}

/** `once` runs one conversation and returns its step count. */
export async function closedLoop(opts: PeerOptions, once: () => Promise<number>): Promise<PeerResult> {
  const t0 = nowMs();
  const measureFrom = t0 + opts.warmupMs;
  const end = measureFrom + opts.measureMs;
  let runs = 0;
  let steps = 0;
  let errors = 0;
  let firstError: string | undefined;
  const latencies: number[] = [];
  const perStep: number[] = [];
  let cpuAtStart: NodeJS.CpuUsage | undefined;
  let cpuAtEnd: NodeJS.CpuUsage | undefined;
  let measuredEnd = end;
  const startTimer = setTimeout(() => {
    cpuAtStart ??= process.cpuUsage();
    opts.onWindow?.("start");
  }, opts.warmupMs);
  const endTimer = setTimeout(() => {
    cpuAtEnd ??= process.cpuUsage(cpuAtStart);
    opts.onWindow?.("end");
  }, opts.warmupMs + opts.measureMs);
  const capped = () => opts.maxRuns !== undefined && opts.maxRuns > 0 && runs >= opts.maxRuns;

  const loop = async (): Promise<void> => {
    while (nowMs() < end && !capped()) {
      const start = nowMs();
      try {
        const n = await once();
        const done = nowMs();
        // Completions inside the window count (unbiased in steady state, whatever the latency).
        if (done >= measureFrom && done <= end && !capped()) {
          runs++;
          steps += n;
          latencies.push(done - start);
          perStep.push((done - start) / n);
          if (capped()) {
            measuredEnd = done;
            if (!cpuAtEnd) {
              cpuAtEnd = process.cpuUsage(cpuAtStart);
              opts.onWindow?.("end");
            }
          }
        }
      } catch (err) {
        errors++;
        firstError ??= err instanceof Error ? err.message : String(err);
        if (errors > 100 && errors > runs)
          throw new Error(`too many errors; first: ${firstError}`, { cause: err });
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: opts.concurrency }, () => loop()));
  } finally {
    clearTimeout(startTimer);
    clearTimeout(endTimer);
  }
  const cpu = cpuAtEnd ?? process.cpuUsage(cpuAtStart);
  const seconds = (Math.min(measuredEnd, end) - measureFrom) / 1000;
  return {
    runs,
    steps,
    seconds,
    runsPerSec: runs / seconds,
    stepsPerSec: steps / seconds,
    runLatency: summarize(latencies),
    perStep: summarize(perStep),
    errors,
    ...(firstError ? { firstError } : {}),
    cpuMsPerRun: runs ? (cpu.user + cpu.system) / 1000 / runs : Number.NaN,
    maxRssMiB: process.resourceUsage().maxRSS / 1024,
  };
}
