import { CapstanError } from "../errors.js";

/** The one place backend (PostgreSQL / driver) errors become Capstan errors. */

interface PgLikeError {
  code?: string;
  constraint?: string;
}

export function pgCode(err: unknown): string | undefined {
  return typeof err === "object" && err !== null ? (err as PgLikeError).code : undefined;
}

export function isUniqueViolation(err: unknown, constraint?: string): boolean {
  return (
    pgCode(err) === "23505" && (constraint === undefined || (err as PgLikeError).constraint === constraint)
  );
}

/**
 * What is known of a statement (or transaction) whose connection failed:
 * - `not_applied`: it certainly did not take effect (the connection could not
 *   be opened, broke before the statement was sent, or broke before COMMIT was
 *   sent: the server rolls an open transaction back when its session ends);
 * - `unknown`: it was sent (a single statement, or the COMMIT) and no answer
 *   came back: it may have committed. Only the caller can find out.
 */
export type ConnectionOutcome = "not_applied" | "unknown";

/**
 * The connection to PostgreSQL failed under a statement: the database is
 * down, restarting, or terminated the session. Thrown by the Db
 * implementations (src/state/db.ts), which classify by where the failure came
 * from (the client's own error and end events, a failed connect, the
 * server's connection-class SQLSTATEs), never by message text; the driver's
 * error is the `cause`. Maps to 503 `database_unavailable`.
 */
export class DbConnectionError extends CapstanError {
  constructor(
    readonly outcome: ConnectionOutcome,
    cause: unknown,
  ) {
    super("database_unavailable", "the database is unreachable; retry shortly", { cause });
    this.name = "DbConnectionError";
  }
}

/**
 * SQLSTATEs that end the session: class 08 (connection exception), 57P01
 * admin_shutdown (pg_terminate_backend, a fast shutdown), 57P02
 * crash_shutdown, 57P03 cannot_connect_now (starting up / shutting down).
 */
function isSessionEndingSqlState(code: string): boolean {
  return code.startsWith("08") || code === "57P01" || code === "57P02" || code === "57P03";
}

/** Socket-level errors of Node (`err.code` of a system error). */
const SOCKET_ERRNOS = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ECONNABORTED",
  "EPIPE",
  "ETIMEDOUT",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "ENETDOWN",
  "EAI_AGAIN",
]);

/**
 * An error that, on its own, says the connection is gone: one of ours, a
 * server error whose SQLSTATE ends the session, or a socket error. A driver
 * error without such a code (e.g. "Connection terminated unexpectedly") is
 * recognised where it happens instead, by the client's events (src/state/db.ts).
 */
export function isConnectionError(err: unknown): boolean {
  if (err instanceof DbConnectionError) return true;
  const code = pgCode(err);
  if (typeof code !== "string") return false;
  return isSessionEndingSqlState(code) || SOCKET_ERRNOS.has(code);
}

/**
 * A failure to open a connection that retrying may cure: the server is
 * unreachable, starting, shutting down or out of connection slots (53300), or
 * the driver gave up (connect timeout, or the socket ended during the
 * handshake: no SQLSTATE at all). A refusal with any other SQLSTATE (bad
 * password 28P01, no such database 3D000) is permanent and passes through.
 */
export function isTransientConnectFailure(err: unknown): boolean {
  const code = pgCode(err);
  return typeof code !== "string" || code === "53300" || isConnectionError(err);
}

/** Wrap anything the database threw so callers see stable codes. */
export function mapDbError(err: unknown): unknown {
  if (err instanceof CapstanError) return err;
  if (isConnectionError(err)) return new DbConnectionError("unknown", err);
  return err;
}
