import { pino, type Logger as PinoLogger, type LevelWithSilent } from "pino";

export type Logger = PinoLogger;

/**
 * The process logger. Structured JSON on stderr (stdout is for data: a key,
 * `--json` output, the dev banner), written synchronously so that nothing is
 * lost on exit; children carry `runId`, `stepNo`, `workerId`, `tenantId`,
 * `requestId` as the design asks.
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
