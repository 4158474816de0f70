/**
 * The one mapping from errors to HTTP (docs/http-api.md#errors): every error answer is
 * `application/problem+json` (RFC 9457) with a stable `code`. CapstanErrors
 * map by code; Fastify's own errors (body parsing, limits, routing) map by
 * their FST_ codes; database connection failures become 503; anything else
 * is a 500 whose detail reveals nothing but the request id.
 */
import { CapstanError, type ErrorCode, type FieldIssue } from "../errors.js";
import { isConnectionError } from "../state/pg-errors.js";
import type { ProblemJson } from "./schemas.js";

interface CodeInfo {
  status: number;
  title: string;
  /** Seconds for Retry-After, for errors that go away by themselves. */
  retryAfter?: number;
}

export const CODES: Record<ErrorCode, CodeInfo> = {
  validation_failed: { status: 400, title: "Invalid request" },
  unauthorized: { status: 401, title: "Unauthorized" },
  // 402, not 429: a spent budget does not come back by retrying soon (clients and SDKs
  // auto-retry 429 with backoff, which would hammer until the period resets); it needs a
  // budget change or the next period (`resets_at`). Money, hence "Payment Required".
  budget_exceeded: { status: 402, title: "Budget exceeded" },
  forbidden: { status: 403, title: "Forbidden" },
  not_found: { status: 404, title: "Not found" },
  thread_busy: { status: 409, title: "Thread busy" },
  run_not_cancellable: { status: 409, title: "Run not cancellable" },
  run_not_waiting: { status: 409, title: "Run not waiting" },
  journal_conflict: { status: 409, title: "Journal conflict" },
  lease_lost: { status: 409, title: "Lease lost" },
  payload_too_large: { status: 413, title: "Payload too large" },
  // Answered on the raw socket, before Fastify sees a request (see clientErrorOf).
  request_timeout: { status: 408, title: "Request timeout" },
  headers_too_large: { status: 431, title: "Request headers too large" },
  unsupported_media_type: { status: 415, title: "Unsupported media type" },
  idempotency_key_reused: { status: 422, title: "Idempotency key reused" },
  unknown_agent: { status: 422, title: "Unknown agent" },
  too_many_runs: { status: 429, title: "Too many runs", retryAfter: 5 },
  rate_limited: { status: 429, title: "Rate limited", retryAfter: 1 },
  internal: { status: 500, title: "Internal error" },
  schema_too_new: { status: 500, title: "Schema too new" },
  config_invalid: { status: 500, title: "Invalid configuration" },
  // A feature this server is not configured for (e.g. memory without an embedder): not a fault.
  not_implemented: { status: 501, title: "Not implemented" },
  database_unavailable: { status: 503, title: "Database unavailable", retryAfter: 1 },
  redis_unavailable: { status: 503, title: "Coordination unavailable", retryAfter: 1 },
  server_busy: { status: 503, title: "Server busy", retryAfter: 1 },
};

/**
 * Details that are part of the public answer for these codes, by detail key
 * and public member name; others stay in logs. A run's status is `run_status`:
 * `status` is the problem's own member (the HTTP status, RFC 9457).
 */
const PUBLIC_DETAILS: Partial<Record<ErrorCode, Readonly<Record<string, string>>>> = {
  thread_busy: { activeRunId: "active_run_id" },
  run_not_cancellable: { status: "run_status" },
  run_not_waiting: { status: "run_status" },
  too_many_runs: { limit: "limit" },
  budget_exceeded: { period: "period", budget: "budget", used: "used", resetsAt: "resets_at" },
};

export interface ProblemAnswer {
  status: number;
  body: ProblemJson & Record<string, unknown>;
  headers: Record<string, string>;
  /** True for 5xx: worth an error log with the cause. */
  serverFault: boolean;
}

interface FastifyLikeError {
  code?: unknown;
  statusCode?: unknown;
  message?: unknown;
}

/** Fastify's errors (FST_*) and other HTTP-ish errors as CapstanErrors. */
function fromFastify(err: FastifyLikeError): CapstanError | undefined {
  const code = typeof err.code === "string" ? err.code : undefined;
  switch (code) {
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new CapstanError("payload_too_large", "the request body is larger than the server accepts", {
        fields: [{ field: "body", message: "too large" }],
      });
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return new CapstanError("unsupported_media_type", "send the request body as application/json");
    case "FST_ERR_CTP_INVALID_JSON_BODY":
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return new CapstanError("validation_failed", "the request body is not valid JSON", {
        fields: [{ field: "body", message: "malformed JSON" }],
      });
    case "FST_ERR_BAD_URL":
      return new CapstanError("validation_failed", "the URL path has a malformed percent-escape", {
        fields: [
          { field: "path", message: "malformed percent-escape (e.g. %zz, or bytes that are not UTF-8)" },
        ],
      });
    case "FST_ERR_MAX_PARAM_LENGTH":
      return new CapstanError("validation_failed", "a URL path segment is longer than the server accepts", {
        fields: [{ field: "path", message: "path segment too long" }],
      });
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return new CapstanError("validation_failed", "the request body does not match its Content-Length", {
        fields: [{ field: "body", message: "length mismatch" }],
      });
    default:
      break;
  }
  const status = typeof err.statusCode === "number" ? err.statusCode : undefined;
  if (status === 404) return new CapstanError("not_found", "no such resource");
  if (status === 413)
    return new CapstanError("payload_too_large", "the request is larger than the server accepts");
  if (status === 415)
    return new CapstanError("unsupported_media_type", "send the request body as application/json");
  if (status !== undefined && status >= 400 && status < 500) {
    return new CapstanError(
      "validation_failed",
      typeof err.message === "string" ? err.message : "bad request",
    );
  }
  if (status === 503)
    return new CapstanError("server_busy", "the server is shutting down or overloaded; retry");
  return undefined;
}

/**
 * Node's HTTP parser refused the bytes before any request existed (a header
 * value with control characters, headers over the size limit, a request not
 * received in time): what the raw-socket answer says.
 */
export function clientErrorOf(err: { code?: unknown }): CapstanError {
  if (err.code === "ERR_HTTP_REQUEST_TIMEOUT")
    return new CapstanError("request_timeout", "the request was not received in time");
  if (err.code === "HPE_HEADER_OVERFLOW") {
    return new CapstanError("headers_too_large", "the request headers are larger than the server accepts", {
      fields: [{ field: "headers", message: "too large" }],
    });
  }
  return new CapstanError("validation_failed", "malformed HTTP request", {
    fields: [
      {
        field: "request",
        message: `not valid HTTP/1.1 (${typeof err.code === "string" ? err.code : "parse error"})`,
      },
    ],
  });
}

export function toCapstanError(err: unknown): CapstanError {
  if (err instanceof CapstanError) return err;
  if (isConnectionError(err)) {
    return new CapstanError("database_unavailable", "the database is unreachable; retry shortly", {
      cause: err,
    });
  }
  if (typeof err === "object" && err !== null) {
    const mapped = fromFastify(err);
    if (mapped) return mapped;
  }
  return new CapstanError("internal", "internal error", { cause: err });
}

/** Build the problem answer for any thrown value. */
export function problemFor(err: unknown, requestId: string): ProblemAnswer {
  const e = toCapstanError(err);
  const info = CODES[e.code] ?? CODES.internal;
  const serverFault = info.status >= 500 && e.code !== "not_implemented";
  const detail =
    e.code === "internal" ||
    (serverFault && !["database_unavailable", "redis_unavailable", "server_busy"].includes(e.code))
      ? `internal error; quote request id ${requestId} when reporting it`
      : e.message;
  const body: ProblemAnswer["body"] = {
    type: `urn:capstan:error:${e.code}`,
    title: info.title,
    status: info.status,
    code: e.code,
    detail,
    request_id: requestId,
  };
  if (e.fields?.length)
    body.fields = e.fields.map((f: FieldIssue) => ({ field: f.field, message: f.message }));
  const publicKeys = PUBLIC_DETAILS[e.code];
  if (publicKeys && e.details) {
    for (const [k, name] of Object.entries(publicKeys))
      if (e.details[k] !== undefined) body[name] = e.details[k];
  }
  const headers: Record<string, string> = {};
  const retryAfter =
    typeof e.details?.retryAfterSeconds === "number" ? e.details.retryAfterSeconds : info.retryAfter;
  if (retryAfter !== undefined) headers["retry-after"] = String(Math.max(1, Math.ceil(retryAfter)));
  if (e.code === "unauthorized") headers["www-authenticate"] = 'Bearer realm="capstan"';
  return { status: info.status, body, headers, serverFault };
}
