import { pino, type Logger as PinoLogger, type LevelWithSilent } from "pino";

export type Logger = PinoLogger;

/**
 * The process logger. Structured JSON on stderr (stdout is for data: a key,
 * `--json` output, the dev banner), written synchronously so that nothing is
 * lost on exit; children carry `runId`, `stepNo`, `workerId`, `tenantId`,
 * `requestId` as the design asks.
 * A call's own object must not repeat a key its logger's bindings already
 * carry (pino would write the key twice).
 */
export function createLogger(opts: { level: LevelWithSilent; name?: string }): Logger {
  return pino(
    {
      level: opts.level,
      base: { pid: process.pid, ...(opts.name ? { role: opts.name } : {}) },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    pino.destination({ dest: 2, sync: true }),
  );
}

/** A logger that drops everything: for tests and library callers that pass none. */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}

export interface ThrottledLog {
  /** Log `obj` under the throttle's message, or count it as suppressed. */
  log(obj?: Record<string, unknown>): void;
  /** Write the pending `suppressed` count now (if any) and stop the timer. */
  flush(): void;
}

/**
 * One log message that may repeat in bursts (a Redis outage fails every
 * delta publish; a database restart errors every idle connection): the first
 * occurrence is written at once, later ones at most once per `intervalMs`.
 * Occurrences in between are counted, not lost: each line carries
 * `suppressed: k` when k occurrences since the previous line got no line of
 * their own, and when no further occurrence comes a timer writes the last
 * one held back (with the count of the others). The timer never keeps the
 * process alive.
 */
export function throttledLog(
  logger: Logger,
  level: "warn" | "info" | "error",
  msg: string,
  opts: { intervalMs: number; now?: () => number },
): ThrottledLog {
  const now = opts.now ?? Date.now;
  let lastAt = -Infinity;
  let held = 0;
  let latest: Record<string, unknown> = {};
  let timer: NodeJS.Timeout | undefined;

  const write = (obj: Record<string, unknown>, suppressed: number) => {
    held = 0;
    lastAt = now();
    logger[level](suppressed > 0 ? { ...obj, suppressed } : obj, msg);
  };
  const flush = () => {
    if (timer) clearTimeout(timer);
    timer = undefined;
    // The last occurrence gets the line; the count is of the ones before it.
    if (held > 0) write(latest, held - 1);
  };
  return {
    log(obj = {}) {
      const t = now();
      if (t - lastAt >= opts.intervalMs) {
        if (timer) clearTimeout(timer);
        timer = undefined;
        write(obj, held);
        return;
      }
      held++;
      latest = obj;
      if (!timer) {
        timer = setTimeout(flush, Math.max(0, lastAt + opts.intervalMs - t));
        timer.unref();
      }
    },
    flush,
  };
}
