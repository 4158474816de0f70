/** The ingress role: HTTP API + SSE (docs/http-api.md). */
export { buildIngress, type IngressDeps } from "./app.js";
export { startIngress, type RunningIngress, type StartIngressOptions } from "./server.js";
export { DEFAULT_RATE_LIMIT, type RedisFailurePolicy } from "./ratelimit.js";
export { DEFAULT_SSE, type SseOptions } from "./sse.js";
export { buildOpenApi } from "./openapi.js";
