/**
 * The one mapping of Redis failures to CapstanErrors, for every Redis user
 * (coordination, cost stores). The rule: Redis is never the truth, so
 * anything that means "Redis cannot serve right now" is `redis_unavailable`
 * (callers fall back or retry); only a reply error that says "this command
 * or script is wrong" is `internal` (a bug: retrying would not help).
 */
import { CapstanError } from "../../errors.js";

/**
 * Reply errors that mean "cannot serve right now" rather than "this command is wrong".
 * NOSCRIPT is here although the script runner (./scripts.ts) answers it itself by
 * resending the body: should one still escape (a flush racing the resend), it is an
 * outage of the script cache, not a bug.
 */
const TRANSIENT_REPLY = /^(LOADING|BUSY|MISCONF|OOM|READONLY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|NOSCRIPT)\b/;

/** Any failure of `op` as a CapstanError; a CapstanError passes through unchanged. */
export function mapRedisError(op: string, err: unknown): CapstanError {
  if (err instanceof CapstanError) return err;
  const e = err instanceof Error ? err : new Error(String(err));
  if (e.name === "ReplyError" && !TRANSIENT_REPLY.test(e.message)) {
    return new CapstanError("internal", `redis ${op} refused: ${e.message}`, { cause: e });
  }
  return new CapstanError("redis_unavailable", `redis ${op} failed: ${e.message}`, { cause: e });
}

/** A reply whose shape is not what the command or script promises. */
export function malformed(what: string): CapstanError {
  return new CapstanError("internal", `malformed redis reply: ${what}`);
}
