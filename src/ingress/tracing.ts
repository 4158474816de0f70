import { SpanKind, SpanStatusCode, trace, type Attributes, type Span } from "@opentelemetry/api";
import {
  ATTR_CLIENT_ADDRESS,
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_HTTP_ROUTE,
  ATTR_URL_PATH,
  ATTR_URL_SCHEME,
  ATTR_USER_AGENT_ORIGINAL,
} from "@opentelemetry/semantic-conventions";
import type { FastifyInstance, FastifyRequest } from "fastify";
import { isCapstanError } from "../errors.js";
import type { Tracing } from "../observability/tracing.js";
import type { TraceContext } from "../state/types.js";

declare module "fastify" {
  interface FastifyRequest {
    /**
     * The W3C trace context of this request's span, to store with what the
     * request creates (a run) so its work continues the trace. Null when
     * tracing is off, the route is not traced, or the span is not sampled
     * in a way that can be propagated.
     */
    traceContext: TraceContext | null;
  }
}

/** Probes and scrapes: frequent, uninteresting, and they would drown real traces. */
const UNTRACED_ROUTES = new Set(["/healthz", "/readyz", "/metrics"]);

/**
 * One server span per HTTP request (OpenTelemetry HTTP semantic
 * conventions): a child of the caller's `traceparent`/`tracestate` when the
 * request carries a valid one, else the root of a new trace. Named
 * `METHOD /route/template` (bounded cardinality); status ERROR only for 5xx,
 * with the exception recorded; refusals (4xx) carry `error.type` (the
 * problem code). The span ends when the response closes, which also covers
 * hijacked SSE streams and clients that disconnect.
 *
 * Call before any hook or route is added, so the span also covers requests
 * refused by the first hooks (shutdown, auth, rate limits). With tracing
 * off only the `traceContext` decoration (always null) is added.
 */
export function traceRequests(app: FastifyInstance, tracing: Tracing | undefined): void {
  app.decorateRequest("traceContext", null);
  if (!tracing) return;
  const errors = new WeakMap<FastifyRequest, unknown>();

  app.addHook("onRequest", async (req, reply) => {
    const route = req.routeOptions.url;
    if (route !== undefined && UNTRACED_ROUTES.has(route)) return;
    const parent = tracing.extract(req.headers);
    const attributes: Attributes = {
      [ATTR_HTTP_REQUEST_METHOD]: req.method,
      [ATTR_URL_SCHEME]: req.protocol,
      // Without the query string: it may carry values nobody wants in a trace backend.
      [ATTR_URL_PATH]: req.url.split("?")[0],
      [ATTR_CLIENT_ADDRESS]: req.ip,
      "capstan.request_id": req.id,
    };
    if (route !== undefined) attributes[ATTR_HTTP_ROUTE] = route;
    const ua = req.headers["user-agent"];
    if (ua) attributes[ATTR_USER_AGENT_ORIGINAL] = ua;
    const span = tracing.tracer.startSpan(
      route !== undefined ? `${req.method} ${route}` : req.method,
      { kind: SpanKind.SERVER, attributes },
      parent,
    );
    req.traceContext = tracing.inject(trace.setSpan(parent, span)) ?? null;
    reply.raw.once("close", () => endSpan(span, req, reply.raw.statusCode, reply.raw.writableFinished));
  });

  // Runs before the error handler turns the error into a problem response.
  app.addHook("onError", async (req, _reply, err) => {
    errors.set(req, err);
  });

  function endSpan(span: Span, req: FastifyRequest, status: number, finished: boolean): void {
    span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
    if (req.principal) span.setAttribute("capstan.tenant.id", req.principal.tenantId);
    if (!finished) span.setAttribute("capstan.response.aborted", true);
    const err = errors.get(req);
    if (status >= 500) {
      span.setAttribute(ATTR_ERROR_TYPE, errorType(err) ?? String(status));
      if (err instanceof Error) span.recordException(err);
      span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : undefined });
    } else if (status >= 400) {
      span.setAttribute(ATTR_ERROR_TYPE, errorType(err) ?? String(status));
    }
    span.end();
  }
}

/** The stable code of the error (Capstan problem code, Fastify `FST_…` code), else its class name. */
function errorType(err: unknown): string | undefined {
  if (err === undefined) return undefined;
  if (isCapstanError(err)) return err.code;
  if (!(err instanceof Error)) return "_OTHER";
  const code = (err as { code?: unknown }).code;
  return typeof code === "string" ? code : err.name;
}
