import { z } from "zod";
import { CapstanError } from "../errors.js";
import { costSettingsSchema } from "../cost/config.js";
import type { FieldIssue } from "../errors.js";
import { keysAt, unknownKeyMessage } from "./unknown-keys.js";

const posInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();

const TRACING_DEFAULTS = {
  enabled: false,
  endpoint: "http://localhost:4318/v1/traces",
  serviceName: "capstan",
  sampleRatio: 1,
  batchDelayMs: 5_000,
  exportTimeoutMs: 10_000,
  maxQueueSize: 2_048,
};

/**
 * Every setting of every role. Resolved once at start (defaults → config file
 * → environment → flags) and passed down; nothing below the CLI reads
 * `process.env`.
 */
export const settingsSchema = z
  .object({
    database: z
      .object({
        /** PostgreSQL URL. Absent: embedded PGlite under `dataDir` (dev only). */
        url: z.string().url().optional(),
        poolSize: posInt.default(10),
        statementTimeoutMs: posInt.default(30_000),
        /**
         * Named (prepared) statements for the hot journal write. Turn off behind
         * a pooler that cannot track them (PgBouncer in transaction mode before
         * 1.21, or with max_prepared_statements = 0).
         */
        preparedStatements: z.boolean().default(true),
      })
      .strict()
      .default({ poolSize: 10, statementTimeoutMs: 30_000, preparedStatements: true }),
    /** Directory for embedded data (PGlite files). */
    dataDir: z.string().min(1).default(".capstan"),
    redis: z
      .object({
        /** Redis URL. Absent: in-process coordination (dev only). */
        url: z.string().optional(),
        keyPrefix: z.string().default("capstan:"),
        /** When Redis fails: let rate-limited requests through ("open") or refuse them ("closed", 503). */
        failurePolicy: z.enum(["open", "closed"]).default("open"),
      })
      .strict()
      .default({ keyPrefix: "capstan:", failurePolicy: "open" }),
    http: z
      .object({
        host: z.string().default("127.0.0.1"),
        port: nonNegInt.max(65535).default(7070),
        bodyLimitBytes: posInt.default(1_048_576),
        /** Requests per API key per minute, shared by all ingress replicas (0 disables). */
        rateLimitPerMinute: nonNegInt.default(600),
        /**
         * Failed API-key lookups per client address per minute, shared by all
         * replicas; past it the client gets 429 without a database lookup, so a
         * flood of garbage keys cannot load PostgreSQL (0 disables).
         */
        authFailuresPerMinute: nonNegInt.default(30),
        /**
         * Which proxies' `X-Forwarded-For` to trust for the client address
         * (Fastify `trustProxy`): false (the socket's peer), true (any), or a
         * comma-separated list of proxy addresses/CIDRs (e.g. the load
         * balancer's subnet; Fastify ignores bare hop counts as spoofable).
         * Behind a load balancer, set it, or every client shares its address.
         */
        trustProxy: z.union([z.boolean(), z.string().min(1)]).default(false),
      })
      .strict()
      .default({
        host: "127.0.0.1",
        port: 7070,
        bodyLimitBytes: 1_048_576,
        rateLimitPerMinute: 600,
        authFailuresPerMinute: 30,
        trustProxy: false,
      }),
    worker: z
      .object({
        /** Stable id in logs and leases; default host:pid:random. */
        id: z.string().min(1).optional(),
        /** Runs executed at once by one worker process (they are I/O bound). */
        concurrency: posInt.default(50),
        /** Lease length; a worker that misses heartbeats this long loses its runs. */
        leaseMs: posInt.min(1000).default(30_000),
        /** Heartbeat period; must be well under the lease. */
        heartbeatMs: posInt.optional(),
        /** Fallback poll when no NOTIFY arrives. */
        pollMs: posInt.default(2_000),
        /**
         * Lost leases in a row (worker crashed, stalled) whose attempt journaled no new
         * step, before the run fails with `attempts_exhausted`; attempts that made
         * progress and graceful hand-offs are never counted.
         */
        maxAttempts: posInt.default(3),
        /** SIGTERM: how long in-flight steps may finish before leases are released. */
        shutdownGraceMs: nonNegInt.default(10_000),
        /**
         * Port of the worker's /healthz, /readyz and /metrics (0: any free port).
         * Unset: 7071, or any free port (logged) when 7071 is taken; a port set
         * explicitly that is taken stops the worker.
         */
        opsPort: nonNegInt.max(65535).optional(),
      })
      .strict()
      .default({
        concurrency: 50,
        leaseMs: 30_000,
        pollMs: 2_000,
        maxAttempts: 3,
        shutdownGraceMs: 10_000,
      }),
    retention: z
      .object({
        /** Finished runs (with journal and events) older than this are pruned. */
        finishedRunsMs: posInt.default(30 * 24 * 3600_000),
        idempotencyKeysMs: posInt.default(24 * 3600_000),
        sweepIntervalMs: posInt.default(60_000),
      })
      .strict()
      .default({
        finishedRunsMs: 30 * 24 * 3600_000,
        idempotencyKeysMs: 24 * 3600_000,
        sweepIntervalMs: 60_000,
      }),
    limits: z
      .object({
        /** Queued + running + waiting runs per tenant, unless the tenant sets its own. */
        maxPendingRunsPerTenant: posInt.default(10_000),
      })
      .strict()
      .default({ maxPendingRunsPerTenant: 10_000 }),
    /** Budgets, provider limits and caches (see src/cost/config.ts). */
    cost: costSettingsSchema,
    memory: z
      .object({
        /** Embedding model for memories: `local:lexical[@dims]` (offline, lexical), `openai:…`, `compatible:…@dims`. */
        embedder: z.string().min(1).default("local:lexical"),
        embeddingCacheTtlMs: posInt.default(7 * 24 * 3600_000),
      })
      .strict()
      .default({ embedder: "local:lexical", embeddingCacheTtlMs: 7 * 24 * 3600_000 }),
    /**
     * OpenTelemetry tracing (docs/operations.md#tracing). Off by default: no SDK objects, no
     * exporter, and no trace context stored with runs. When on, every role
     * exports spans over OTLP/HTTP (JSON) to `endpoint`.
     */
    tracing: z
      .object({
        enabled: z.boolean().default(false),
        /** The OTLP/HTTP traces URL, used as is (a collector's is `http://host:4318/v1/traces`). */
        endpoint: z.string().url().default(TRACING_DEFAULTS.endpoint),
        /** Sent with every export, e.g. a hosted backend's API key. Never logged. */
        headers: z.record(z.string(), z.string()).default({}),
        /** The `service.name` resource attribute; the role is `capstan.role`. */
        serviceName: z.string().min(1).default(TRACING_DEFAULTS.serviceName),
        /**
         * Share of new traces recorded (0–1). Parent-based: a request that
         * carries a sampled `traceparent`, and every run it creates, follows
         * the caller's decision instead.
         */
        sampleRatio: z.number().min(0).max(1).default(TRACING_DEFAULTS.sampleRatio),
        /** Batch export: the delay between exports, each export's timeout, the span queue bound. */
        batchDelayMs: posInt.default(TRACING_DEFAULTS.batchDelayMs),
        exportTimeoutMs: posInt.default(TRACING_DEFAULTS.exportTimeoutMs),
        maxQueueSize: posInt.default(TRACING_DEFAULTS.maxQueueSize),
      })
      .strict()
      .default({ ...TRACING_DEFAULTS, headers: {} }),
    log: z
      .object({
        level: z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]).default("info"),
      })
      .strict()
      .default({ level: "info" }),
  })
  .strict();

export type Settings = z.infer<typeof settingsSchema>;
export type SettingsInput = z.input<typeof settingsSchema>;
export type TracingSettings = Settings["tracing"];

type EnvSpec =
  | { path: string[]; kind: "string" | "int" | "number" }
  /** A variable that sets zero or more settings (a switch, a list of headers, a derived URL). */
  | { kind: "custom"; apply: (raw: string) => [path: string[], value: unknown][] };

/** `CAPSTAN_TRUST_PROXY`: true/false, or a list of proxy addresses/CIDRs as given. */
function trustProxyValue(raw: string): unknown {
  const b = onOff(raw);
  return typeof b === "boolean" ? b : raw.trim();
}

/** `true`/`on`/`1` or `false`/`off`/`0`; anything else is passed on and reported as invalid. */
function onOff(raw: string): unknown {
  const v = raw.trim().toLowerCase();
  return ["true", "on", "1", "yes"].includes(v)
    ? true
    : ["false", "off", "0", "no"].includes(v)
      ? false
      : raw;
}

/** `CAPSTAN_TRACING`: `otlp` turns tracing on, `off`/`none` off; anything else is reported as invalid. */
function tracingSwitch(raw: string): [string[], unknown][] {
  const v = raw.trim().toLowerCase();
  const enabled = v === "otlp" ? true : ["off", "none", "false", "0"].includes(v) ? false : raw;
  return [[["tracing", "enabled"], enabled]];
}

/**
 * `OTEL_EXPORTER_OTLP_HEADERS` and the traces-specific variant: `k=v,k2=v2`
 * with percent-encoded values (the OpenTelemetry convention). Each header is
 * its own setting, so the two variables and the config file merge by name.
 * A malformed list is passed on as a string, which validation reports.
 */
function otlpHeaders(raw: string): [string[], unknown][] {
  const out: [string[], unknown][] = [];
  for (const part of raw.split(",")) {
    if (part.trim() === "") continue;
    const eq = part.indexOf("=");
    const key = eq > 0 ? part.slice(0, eq).trim() : "";
    if (!key) return [[["tracing", "headers"], raw]];
    let value: string;
    try {
      value = decodeURIComponent(part.slice(eq + 1).trim());
    } catch {
      return [[["tracing", "headers"], raw]];
    }
    out.push([["tracing", "headers", key], value]);
  }
  return out;
}

/**
 * Environment variables and the setting each one sets. Order matters where
 * two set the same setting: the later one wins (the traces-specific OTEL_*
 * variables over the general ones, `OTEL_SDK_DISABLED=true` over
 * `CAPSTAN_TRACING`).
 */
const ENV: Record<string, EnvSpec> = {
  DATABASE_URL: { path: ["database", "url"], kind: "string" },
  CAPSTAN_DB_POOL_SIZE: { path: ["database", "poolSize"], kind: "int" },
  CAPSTAN_DB_PREPARED_STATEMENTS: {
    kind: "custom",
    apply: (raw) => [[["database", "preparedStatements"], onOff(raw)]],
  },
  CAPSTAN_DATA_DIR: { path: ["dataDir"], kind: "string" },
  REDIS_URL: { path: ["redis", "url"], kind: "string" },
  CAPSTAN_REDIS_PREFIX: { path: ["redis", "keyPrefix"], kind: "string" },
  CAPSTAN_REDIS_FAILURE_POLICY: { path: ["redis", "failurePolicy"], kind: "string" },
  CAPSTAN_RATE_LIMIT_PER_MINUTE: { path: ["http", "rateLimitPerMinute"], kind: "int" },
  CAPSTAN_AUTH_FAILURES_PER_MINUTE: { path: ["http", "authFailuresPerMinute"], kind: "int" },
  CAPSTAN_TRUST_PROXY: { kind: "custom", apply: (raw) => [[["http", "trustProxy"], trustProxyValue(raw)]] },
  CAPSTAN_OPS_PORT: { path: ["worker", "opsPort"], kind: "int" },
  HOST: { path: ["http", "host"], kind: "string" },
  PORT: { path: ["http", "port"], kind: "int" },
  CAPSTAN_WORKER_ID: { path: ["worker", "id"], kind: "string" },
  CAPSTAN_WORKER_CONCURRENCY: { path: ["worker", "concurrency"], kind: "int" },
  CAPSTAN_LEASE_MS: { path: ["worker", "leaseMs"], kind: "int" },
  CAPSTAN_HEARTBEAT_MS: { path: ["worker", "heartbeatMs"], kind: "int" },
  CAPSTAN_POLL_MS: { path: ["worker", "pollMs"], kind: "int" },
  CAPSTAN_MAX_ATTEMPTS: { path: ["worker", "maxAttempts"], kind: "int" },
  CAPSTAN_SHUTDOWN_GRACE_MS: { path: ["worker", "shutdownGraceMs"], kind: "int" },
  CAPSTAN_LOG_LEVEL: { path: ["log", "level"], kind: "string" },
  CAPSTAN_EMBEDDER: { path: ["memory", "embedder"], kind: "string" },
  CAPSTAN_TRACING: { kind: "custom", apply: tracingSwitch },
  OTEL_SERVICE_NAME: { path: ["tracing", "serviceName"], kind: "string" },
  // The general endpoint is a base URL: the traces path is appended (OTLP exporter spec).
  OTEL_EXPORTER_OTLP_ENDPOINT: {
    kind: "custom",
    apply: (raw) => [[["tracing", "endpoint"], raw.trim().replace(/\/+$/, "") + "/v1/traces"]],
  },
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: { path: ["tracing", "endpoint"], kind: "string" },
  OTEL_EXPORTER_OTLP_HEADERS: { kind: "custom", apply: otlpHeaders },
  OTEL_EXPORTER_OTLP_TRACES_HEADERS: { kind: "custom", apply: otlpHeaders },
  OTEL_EXPORTER_OTLP_TIMEOUT: { path: ["tracing", "exportTimeoutMs"], kind: "int" },
  OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: { path: ["tracing", "exportTimeoutMs"], kind: "int" },
  OTEL_TRACES_SAMPLER_ARG: { path: ["tracing", "sampleRatio"], kind: "number" },
  OTEL_BSP_SCHEDULE_DELAY: { path: ["tracing", "batchDelayMs"], kind: "int" },
  OTEL_BSP_MAX_QUEUE_SIZE: { path: ["tracing", "maxQueueSize"], kind: "int" },
  OTEL_SDK_DISABLED: {
    kind: "custom",
    apply: (raw) => (raw.trim().toLowerCase() === "true" ? [[["tracing", "enabled"], false]] : []),
  },
};

type Tree = Record<string, unknown>;

function isTree(v: unknown): v is Tree {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function deepMerge(a: Tree, b: Tree): Tree {
  const out: Tree = { ...a };
  for (const [k, v] of Object.entries(b)) {
    if (v === undefined) continue;
    const prev = out[k];
    out[k] = isTree(prev) && isTree(v) ? deepMerge(prev, v) : v;
  }
  return out;
}

function setPath(t: Tree, path: string[], value: unknown): void {
  let cur = t;
  for (const key of path.slice(0, -1)) {
    const next = cur[key];
    if (!isTree(next)) cur[key] = {};
    cur = cur[key] as Tree;
  }
  cur[path[path.length - 1]!] = value;
}

function fromEnv(env: Record<string, string | undefined>): { tree: Tree; source: Map<string, string> } {
  const tree: Tree = {};
  const source = new Map<string, string>();
  for (const [name, spec] of Object.entries(ENV)) {
    const raw = env[name];
    if (raw === undefined || raw === "") continue;
    // A value that does not parse stays a string: validation then names the variable.
    const sets: [string[], unknown][] =
      spec.kind === "custom"
        ? spec.apply(raw)
        : [
            [
              spec.path,
              (spec.kind === "int" && /^-?\d+$/.test(raw.trim())) ||
              (spec.kind === "number" && /^-?(\d+\.?\d*|\.\d+)$/.test(raw.trim()))
                ? Number(raw)
                : raw,
            ],
          ];
    for (const [path, value] of sets) {
      setPath(tree, path, value);
      source.set(path.join("."), `environment variable ${name}`);
    }
  }
  return { tree, source };
}

function hasPath(t: Tree, path: string[]): boolean {
  let cur: unknown = t;
  for (const key of path) {
    if (!isTree(cur) || !(key in cur)) return false;
    cur = cur[key];
  }
  return true;
}

/** `shown` prefixes the path in the message (`server.` for the config file's section). */
function unknownKeyField(path: readonly PropertyKey[], key: string, shown: string): FieldIssue {
  const known = keysAt(settingsSchema, path) ?? [];
  const prefix = path.map((p) => `${String(p)}.`).join("");
  return { field: prefix + key, message: unknownKeyMessage(key, known, shown + prefix) };
}

/**
 * Unknown setting names in a config file's `server` section, each with the
 * closest valid name. Values are not checked here: the environment and flags
 * may still override them (`resolveSettings` validates the merged result).
 */
export function unknownSettingKeys(server: unknown): FieldIssue[] {
  const parsed = settingsSchema.safeParse(server);
  if (parsed.success) return [];
  return parsed.error.issues.flatMap((i) =>
    i.code === "unrecognized_keys" ? i.keys.map((key) => unknownKeyField(i.path, key, "server.")) : [],
  );
}

export interface ResolveInput {
  /** The `server` section of the config file, if any. */
  file?: unknown;
  env?: Record<string, string | undefined>;
  flags?: SettingsInput;
}

/**
 * Merge the layers and validate once. Errors name the setting, where its
 * value came from, and what is expected.
 */
export function resolveSettings(input: ResolveInput = {}): Settings {
  const env = fromEnv(input.env ?? {});
  const file = isTree(input.file) ? input.file : {};
  const merged = deepMerge(deepMerge(file, env.tree), input.flags ?? {});
  const parsed = settingsSchema.safeParse(merged);
  if (!parsed.success) {
    // `line` is how the issue reads in the message; an unknown-key message names its key itself.
    const issues = parsed.error.issues.flatMap((i): (FieldIssue & { line: string })[] => {
      if (i.code === "unrecognized_keys") {
        // Only the config file can hold one: environment variables and flags map to known settings.
        return i.keys.map((key) => {
          const inFile = hasPath(file, [...i.path.map(String), key]);
          const f = unknownKeyField(i.path, key, inFile ? "server." : "");
          return { ...f, line: f.message };
        });
      }
      const field = i.path.join(".") || "(root)";
      const from = env.source.get(field);
      const message = from ? `${i.message} (from ${from})` : i.message;
      return [{ field, message, line: `${field}: ${message}` }];
    });
    throw new CapstanError(
      "config_invalid",
      "invalid configuration: " + issues.map((f) => f.line).join("; "),
      { fields: issues.map(({ field, message }) => ({ field, message })) },
    );
  }
  const s = parsed.data;
  if (s.worker.heartbeatMs !== undefined && s.worker.heartbeatMs * 2 > s.worker.leaseMs) {
    throw new CapstanError(
      "config_invalid",
      `invalid configuration: worker.heartbeatMs (${s.worker.heartbeatMs}) must be at most half of worker.leaseMs (${s.worker.leaseMs})`,
      { fields: [{ field: "worker.heartbeatMs", message: "must be at most half of worker.leaseMs" }] },
    );
  }
  return s;
}

/** The heartbeat period in force: explicit, or a third of the lease. */
export function heartbeatMs(s: Settings): number {
  return s.worker.heartbeatMs ?? Math.floor(s.worker.leaseMs / 3);
}
