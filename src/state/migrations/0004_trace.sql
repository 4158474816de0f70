-- Capstan schema, version 4: trace context of runs (OpenTelemetry, docs/operations.md#tracing).
-- Forward-only: never edit a released migration, add a new numbered file.

-- The W3C trace context of the request that created the run,
-- {"traceparent": "00-…", "tracestate": "…"} (tracestate optional), so every
-- worker attempt continues the caller's trace. Written by the ingress only
-- when tracing is enabled, from its own request span (never the raw client
-- header); NULL otherwise, and for runs created before this migration: a
-- worker with tracing on then starts a new trace for the run.
--
-- Nullable, no default and no CHECK: a catalog-only change, instant on a
-- large runs table (a CHECK would scan it under an exclusive lock). Readers
-- validate the value (src/state/types.ts `toTraceContext`).
ALTER TABLE runs ADD COLUMN trace_context jsonb;
