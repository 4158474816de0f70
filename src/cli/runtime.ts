import { resolve } from "node:path";
import { loadConfigFile } from "../agent/loader.js";
import { resolveModel, toolSchemas } from "../agent/models.js";
import type { CapstanConfig, ModelProviderSettings } from "../agent/types.js";
import { resolveSettings, type Settings, type SettingsInput } from "../config/config.js";
import { createMemoryCoordination, createRedisCoordination } from "../coord/index.js";
import type { Coordination } from "../coord/types.js";
import { CapstanError } from "../errors.js";
import { createLogger, type Logger } from "../logger.js";
import { createPgDb, createPgliteDb, type Db } from "../state/db.js";
import { migrate } from "../state/migrate.js";
import type { LoadedAgent } from "../worker/run-loop.js";
import type { RunServices } from "../worker/services.js";
import { cachedEmbedder, resolveEmbedder, type Embedder } from "../agent/embeddings.js";
import { memoryTools } from "../agent/memory-tools.js";
import { memoryNamespace } from "../agent/memory-namespace.js";
import { describeMemoryBackend, ensureVectorIndex, memoryBackend } from "../state/memories.js";
import { createCostBackend } from "../cost/backend.js";
import { createBudgetGuard } from "../cost/budget.js";
import { createProviderLimiter } from "../cost/provider-limits.js";
import { createLlmCache, createToolCache } from "../cost/cache.js";
import { validateCacheConfig } from "../cost/cache-config.js";
import type { Tracing } from "../observability/tracing.js";
import { lockDataDir, type DataDirLock } from "./data-lock.js";

export type Role = "dev" | "ingress" | "worker" | "admin";

/** This file is TypeScript: the process runs from source, under a loader (tsx) that imports TypeScript. */
const RUNNING_FROM_SOURCE = import.meta.url.endsWith(".ts");

export interface RuntimeOptions {
  role: Role;
  cwd: string;
  env: Record<string, string | undefined>;
  configPath?: string;
  flags?: SettingsInput;
  /** Apply pending migrations at start (default true; they run under an advisory lock). */
  migrate?: boolean;
  /** Open the coordination backend (not needed by admin commands). */
  coordination?: boolean;
  /** The config to use when no config file exists (`capstan dev`: the demo agent). */
  fallbackConfig?: () => CapstanConfig;
  /** What this process runs, e.g. `capstan keys create`: named to whoever finds the data directory locked. */
  command?: string;
}

/** Everything a process role needs, opened once from resolved configuration. */
export interface Runtime {
  /** Budgets, provider limits, caches and memory for the reasoning loop. */
  services: RunServices;
  /** The embedder for memories (ingress search uses it too). */
  embedder: Embedder;
  /** Report the embedding cache's hits and misses (per embed call) to `fn`. */
  observeEmbeddingCache(fn: (hits: number, misses: number) => void): void;
  settings: Settings;
  logger: Logger;
  db: Db;
  coord: Coordination | undefined;
  config: CapstanConfig | null;
  agents: Map<string, LoadedAgent>;
  /** OpenTelemetry tracing; undefined when disabled (the default) and for admin commands. */
  tracing: Tracing | undefined;
  /** Close everything; flushes unexported spans first (every role's SIGTERM path ends here). */
  close(): Promise<void>;
}

/** Where `PostgreSQL` lives, without the password, for error messages. */
function describeUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || "5432"}${u.pathname}`;
  } catch {
    return "(unparseable DATABASE_URL)";
  }
}

function modelSettings(
  config: CapstanConfig | null,
  env: Record<string, string | undefined>,
): ModelProviderSettings {
  const m: ModelProviderSettings = { ...(config?.models ?? {}) };
  if (env.CAPSTAN_COMPATIBLE_BASE_URL) {
    m.compatible = {
      ...(m.compatible ?? {}),
      baseURL: env.CAPSTAN_COMPATIBLE_BASE_URL,
      ...(env.CAPSTAN_COMPATIBLE_API_KEY ? { apiKey: env.CAPSTAN_COMPATIBLE_API_KEY } : {}),
    };
  }
  return m;
}

/**
 * Resolve every agent's model and tool schemas once. Agents with
 * `memory.tools` get the built-in `remember`/`recall` tools; cache settings
 * are validated again (a config built by hand must not cache a non-pure tool).
 */
export function loadAgents(
  config: CapstanConfig | null,
  env: Record<string, string | undefined>,
  memory?: { db: Db; embedder: Embedder },
): Map<string, LoadedAgent> {
  const providers = modelSettings(config, env);
  const out = new Map<string, LoadedAgent>();
  for (const agent of config?.agents ?? []) {
    let def = agent;
    const mt = agent.memory?.tools;
    if (mt && memory) {
      const ns = mt === true ? "thread" : mt.namespace;
      const { remember, recall } = memoryTools({
        db: memory.db,
        embedder: memory.embedder,
        namespace: (ctx) => memoryNamespace(ns, ctx.threadId),
      });
      def = { ...agent, tools: { remember, recall, ...agent.tools } };
    }
    validateCacheConfig(def);
    out.set(def.name, { def, model: resolveModel(def.model, providers), tools: toolSchemas(def) });
  }
  return out;
}

export async function openRuntime(opts: RuntimeOptions): Promise<Runtime> {
  const config =
    (await loadConfigFile(opts.configPath, opts.cwd, { nativeTypeScript: RUNNING_FROM_SOURCE })) ??
    opts.fallbackConfig?.() ??
    null;
  const settings = resolveSettings({
    file: config?.server,
    env: opts.env,
    ...(opts.flags ? { flags: opts.flags } : {}),
  });
  const logger = createLogger({ level: settings.log.level, name: opts.role });

  let db: Db;
  let lock: DataDirLock | undefined;
  const closeDb = async (): Promise<void> => {
    await db.close().catch(() => {});
    lock?.release();
  };
  if (settings.database.url) {
    db = createPgDb({
      url: settings.database.url,
      poolSize: settings.database.poolSize,
      statementTimeoutMs: settings.database.statementTimeoutMs,
      preparedStatements: settings.database.preparedStatements,
      logger,
      applicationName: `capstan-${opts.role}`,
    });
    try {
      await db.query("SELECT 1");
    } catch (err) {
      await db.close().catch(() => {});
      throw new CapstanError(
        "database_unavailable",
        `cannot reach PostgreSQL at ${describeUrl(settings.database.url)} (${err instanceof Error ? err.message : String(err)}): ` +
          "start it, or set DATABASE_URL to a reachable server",
        { cause: err },
      );
    }
  } else if (opts.role === "dev" || opts.role === "admin") {
    // PGlite is single-process: a second process on the same files would lose writes.
    const dataDir = resolve(opts.cwd, settings.dataDir);
    lock = lockDataDir(dataDir, opts.command ?? `capstan ${opts.role}`);
    const dir = resolve(dataDir, "pgdata");
    try {
      db = await createPgliteDb({ dataDir: dir, logger });
    } catch (err) {
      lock.release();
      throw err;
    }
    logger.info({ dataDir: dir }, "using embedded PostgreSQL (PGlite)");
  } else {
    throw new CapstanError(
      "config_invalid",
      `capstan ${opts.role} needs PostgreSQL: set DATABASE_URL (e.g. postgres://user@127.0.0.1:5432/capstan); ` +
        "use `capstan dev` for the embedded database",
    );
  }

  try {
    if (opts.migrate !== false) await migrate(db, logger);
  } catch (err) {
    await closeDb();
    throw err;
  }

  let coord: Coordination | undefined;
  if (opts.coordination !== false) {
    const events = { maxLen: 10_000, ttlMs: 24 * 3600_000 };
    if (settings.redis.url) {
      coord = createRedisCoordination({
        url: settings.redis.url,
        keyPrefix: settings.redis.keyPrefix,
        logger,
        events,
      });
    } else {
      if (opts.role !== "dev") {
        logger.warn(
          "REDIS_URL is not set: coordination is in-process only (rate limits per process, streams served from Postgres without token deltas)",
        );
      }
      coord = createMemoryCoordination({ events });
    }
  }

  const providers = modelSettings(config, opts.env);
  let agents: Map<string, LoadedAgent>;
  let embedder: Embedder;
  // Bound later by the role's metrics (processMetrics), which exist only once the runtime does.
  let embeddingCacheObserver: ((hits: number, misses: number) => void) | undefined;
  try {
    const base = resolveEmbedder(settings.memory.embedder, providers);
    // A local embedder costs microseconds: a cache round trip would only add latency and Redis memory.
    embedder =
      coord && !base.id.startsWith("local:")
        ? cachedEmbedder(base, coord.cache, settings.memory.embeddingCacheTtlMs, (hits, misses) =>
            embeddingCacheObserver?.(hits, misses),
          )
        : base;
    agents = loadAgents(config, opts.env, { db, embedder });
  } catch (err) {
    await coord?.close().catch(() => {});
    await closeDb();
    throw err;
  }
  const backend = await memoryBackend(db).catch(() => "exact" as const);
  if (backend === "exact") logger.warn(describeMemoryBackend(backend));
  else {
    logger.info(describeMemoryBackend(backend));
    // The HNSW index for the configured embedder's dims (memoised; instant when it exists).
    // Without it searches of large namespaces would scan. Never fatal: search still works.
    await ensureVectorIndex(db, embedder.dims).catch((err: unknown) =>
      logger.warn({ err, dims: embedder.dims }, "could not create the memory vector index; searches scan"),
    );
  }

  const costBackend =
    opts.coordination === false
      ? undefined
      : createCostBackend({
          ...(settings.redis.url
            ? { redis: { url: settings.redis.url, keyPrefix: settings.redis.keyPrefix } }
            : {}),
          logger,
        });
  const services: RunServices = { memory: { embedder } };
  if (costBackend && coord) {
    services.cost = {
      budget: createBudgetGuard({
        db,
        store: costBackend.budget,
        logger,
        reservationTtlMs: settings.cost.reservationTtlMs,
        resyncMs: settings.cost.resyncMs,
        budgetCacheMs: settings.cost.budgetCacheMs,
      }),
      limiter: createProviderLimiter({
        store: costBackend.limits,
        limits: providers.limits ?? {},
        logger,
        maxWaitMs: settings.cost.providerMaxWaitMs,
      }),
      llmCache: createLlmCache({ cache: coord.cache, logger }),
      toolCache: createToolCache({ cache: coord.cache, logger }),
      defaultMaxOutputTokens: settings.cost.defaultMaxOutputTokens,
    };
  }

  // Last, once nothing above can fail: a failed start leaves no exporter behind. The
  // OpenTelemetry SDK is loaded only when tracing is on (it costs ~0.2 s of CPU at start).
  const tracing =
    opts.role === "admin" || !settings.tracing.enabled
      ? undefined
      : (await import("../observability/tracing.js")).createTracing(settings.tracing, logger, {
          role: opts.role,
        });

  return {
    services,
    embedder,
    observeEmbeddingCache: (fn) => {
      embeddingCacheObserver = fn;
    },
    settings,
    logger,
    db,
    coord,
    config,
    agents,
    tracing,
    async close() {
      // The roles have stopped, so their spans have ended: export them while the network is up.
      await tracing?.shutdown();
      await services.cost?.budget.close().catch(() => {});
      await costBackend
        ?.close()
        .catch((err: unknown) => logger.warn({ err }, "closing the cost backend failed"));
      await coord?.close().catch((err: unknown) => logger.warn({ err }, "closing coordination failed"));
      await db.close().catch((err: unknown) => logger.warn({ err }, "closing the database failed"));
      lock?.release();
    },
  };
}
