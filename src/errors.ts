/**
 * Typed errors with stable codes. Backend errors are mapped to these in one
 * place (src/state/pg-errors.ts) and these are mapped to HTTP in one place
 * (the ingress error handler). The `code` strings are a public contract.
 */
export type ErrorCode =
  | "validation_failed"
  | "not_found"
  | "unauthorized"
  | "forbidden"
  | "thread_busy"
  | "run_not_cancellable"
  | "run_not_waiting"
  | "idempotency_key_reused"
  | "too_many_runs"
  | "rate_limited"
  | "budget_exceeded"
  | "lease_lost"
  | "journal_conflict"
  | "schema_too_new"
  | "config_invalid"
  | "database_unavailable"
  | "redis_unavailable"
  | "unknown_agent"
  | "payload_too_large"
  | "headers_too_large"
  | "request_timeout"
  | "unsupported_media_type"
  | "server_busy"
  | "not_implemented"
  | "internal";

/**
 * `error.code` of a run that ended without succeeding (`GET /v1/runs/:id`,
 * the `run.failed` and `run.cancelled` events): a public contract like
 * `ErrorCode` (codes are added, never renamed). docs/http-api.md#run-error-codes
 * says when each one happens and whether a new run or a resume helps.
 */
export type RunErrorCode =
  // status `cancelled`
  | "cancelled"
  | "interrupted"
  // status `failed`, set by the scheduler (src/state/scheduler.ts)
  | "attempts_exhausted"
  // status `failed`, set by the worker (src/worker)
  | "unknown_agent"
  | "max_steps_exceeded"
  | "max_tokens_exceeded"
  | "wall_time_exceeded"
  | "budget_exceeded"
  | "rate_limited"
  | "server_busy"
  | "model_error"
  | "internal";

/**
 * `error.code` of a failed tool step (`GET /v1/runs/:id/steps`). The run goes
 * on: the model receives the error as the tool's result.
 * docs/http-api.md#step-error-codes.
 */
export type StepErrorCode = "unknown_tool" | "invalid_arguments" | "rejected" | "tool_timeout" | "tool_error";

export interface FieldIssue {
  /** Dotted path of the offending field, e.g. `input.content` or `query.limit`. */
  field: string;
  message: string;
}

export class CapstanError extends Error {
  readonly code: ErrorCode;
  readonly fields: FieldIssue[] | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    opts: { fields?: FieldIssue[]; details?: Record<string, unknown>; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "CapstanError";
    this.code = code;
    this.fields = opts.fields;
    this.details = opts.details;
  }
}

/**
 * A write was refused because the caller no longer holds the run's lease
 * (its epoch is stale, or the run left `running`: cancelled, reclaimed).
 * The worker must abort its local work for the run and write nothing more.
 */
export class LeaseLostError extends CapstanError {
  constructor(runId: string, epoch: number) {
    super("lease_lost", `lease of run ${runId} at epoch ${epoch} is no longer held`, {
      details: { runId, epoch },
    });
    this.name = "LeaseLostError";
  }
}

export function isCapstanError(err: unknown, code?: ErrorCode): err is CapstanError {
  return err instanceof CapstanError && (code === undefined || err.code === code);
}
