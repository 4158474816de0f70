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

/** Connection-level failures: the database is down, restarting or unreachable. */
export function isConnectionError(err: unknown): boolean {
  const code = pgCode(err);
  if (code === undefined) {
    return (
      err instanceof Error &&
      /Connection terminated|connect ECONNREFUSED|timeout exceeded when trying to connect/i.test(err.message)
    );
  }
  return [
    "ECONNREFUSED",
    "ECONNRESET",
    "ETIMEDOUT",
    "EPIPE",
    "57P01",
    "57P02",
    "57P03",
    "08000",
    "08001",
    "08003",
    "08006",
  ].includes(code);
}

/** Wrap anything the database threw so callers see stable codes. */
export function mapDbError(err: unknown): unknown {
  if (err instanceof CapstanError) return err;
  if (isConnectionError(err)) {
    return new CapstanError("database_unavailable", "the database is unreachable; retry shortly", {
      cause: err,
    });
  }
  return err;
}
