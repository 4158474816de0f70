import { CommanderError } from "commander";
import { isCapstanError } from "../errors.js";

/**
 * The CLI's exit codes: a contract for scripts (`capstan --help` prints it).
 * Anything that is not a clean success says on stderr what to do.
 */
export const EXIT = {
  ok: 0,
  /** A runtime failure: a backend unreachable, an unexpected error. */
  failure: 1,
  /** Bad usage or configuration: a flag, a setting, the config file, a name that does not exist. */
  usage: 2,
  /** Something this process needs is held by another: the embedded data directory, a port. */
  busy: 3,
  /** The database has no (or an older) Capstan schema: run `capstan migrate`. */
  noSchema: 4,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export const EXIT_CODES_HELP = `
Exit codes:
  0  success
  1  runtime failure (e.g. PostgreSQL unreachable)
  2  bad usage or configuration (a flag, a setting, the config file, an unknown name)
  3  busy: another process holds the embedded data directory or a port
  4  the database has no Capstan schema: run \`capstan migrate\``;

/** An error the CLI reports as its message alone, with its own exit code. */
export class CliError extends Error {
  readonly exitCode: ExitCode;
  constructor(exitCode: ExitCode, message: string, opts: { cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "CliError";
    this.exitCode = exitCode;
  }
}

/**
 * What to print (nothing when the message was printed already) and the exit
 * code for an error that ended a command.
 */
export function describeExit(err: unknown): { code: ExitCode; message?: string } {
  // Commander printed its own message (unknown option, missing argument, help, version).
  if (err instanceof CommanderError) return { code: err.exitCode === 0 ? EXIT.ok : EXIT.usage };
  if (err instanceof CliError) return { code: err.exitCode, message: err.message };
  if (isCapstanError(err)) {
    const usage = ["config_invalid", "validation_failed", "not_found", "unknown_agent"].includes(err.code);
    return { code: usage ? EXIT.usage : EXIT.failure, message: err.message };
  }
  // PostgreSQL undefined_table: a command read a database no one migrated.
  if ((err as { code?: unknown } | null)?.code === "42P01")
    return {
      code: EXIT.noSchema,
      message: `the database has no Capstan schema (${(err as Error).message}): run \`capstan migrate\``,
    };
  return { code: EXIT.failure, message: err instanceof Error ? (err.stack ?? err.message) : String(err) };
}
