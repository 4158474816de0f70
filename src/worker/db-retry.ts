import { abortableSleep } from "../abort.js";
import type { Logger } from "../logger.js";
import { isCapstanError } from "../errors.js";
import { DbConnectionError, isConnectionError } from "../state/pg-errors.js";

/**
 * A run's database work survives lost connections within its attempt: an
 * operation whose connection failed is retried on a fresh one at once, with
 * short backoff, for as long as the run still holds its lease. Never by
 * failing the run, never by waiting for the lease to expire.
 *
 * Reads and idempotent writes are simply re-run. A write whose outcome is
 * unknown (the connection died after it was sent, e.g. during COMMIT) is
 * never re-run blindly: `committed` asks the database whether it took
 * effect (src/state/write-outcome.ts) and, if so, returns its result; only
 * a write that certainly did not commit is sent again. This is what keeps a
 * journaled step exactly once: a retried insert that would find its own
 * committed row is answered from that row instead of being refused as a
 * journal conflict or a lost lease.
 */
export const DB_STEP_RETRY = { tries: 12, baseDelayMs: 25, maxDelayMs: 1_000 };

export interface DbRetryScope {
  /** Aborts the retries (cancel, lease lost, shutdown). */
  signal: AbortSignal;
  logger: Logger;
  /** False once the lease may have run out: no point retrying then. */
  leaseValid?: () => boolean;
}

export async function withDbRetry<T>(
  scope: DbRetryScope,
  what: string,
  op: () => Promise<T>,
  committed?: () => Promise<T | undefined>,
): Promise<T> {
  let unknown = false;
  for (let tryNo = 1; ; tryNo++) {
    try {
      if (unknown && committed) {
        const done = await committed();
        if (done !== undefined) {
          scope.logger.info({ op: what, tries: tryNo }, "a write whose connection was lost had committed");
          return done;
        }
        unknown = false;
      }
      return await op();
    } catch (err) {
      if (!isConnectionError(err)) throw err;
      // Only a Db error that says so is known not to have been applied.
      if (!(err instanceof DbConnectionError) || err.outcome === "unknown") unknown = true;
      if (tryNo >= DB_STEP_RETRY.tries || scope.signal.aborted || scope.leaseValid?.() === false) throw err;
      scope.logger.debug({ op: what, tries: tryNo, err }, "database connection lost; retrying");
      await abortableSleep(delay(tryNo), scope.signal);
    }
  }
}

function delay(tryNo: number): number {
  const cap = Math.min(DB_STEP_RETRY.maxDelayMs, DB_STEP_RETRY.baseDelayMs * 2 ** (tryNo - 1));
  return cap / 2 + (Math.random() * cap) / 2;
}

/** Still a database outage after the retries (the run is left to its lease, not failed). */
export function isDbOutage(err: unknown): boolean {
  return isCapstanError(err, "database_unavailable") || isConnectionError(err);
}
