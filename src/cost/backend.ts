/**
 * The stores behind budgets and provider limits for one process: Redis when
 * configured (shared by every worker), else process memory (embedded mode).
 *
 * Cost control needs atomic multi-key Lua scripts, which the coordination
 * interfaces (src/coord) do not offer, so it owns one connection of its own
 * ("<name>:cost"), built from the same layer as coordination's
 * (src/coord/redis/connection.ts: no offline queue, bounded waits, every
 * failure a `redis_unavailable` CapstanError, reconnection in the background).
 * Both stores share it; `close()` closes it.
 *
 * Every key a script touches is passed in KEYS (keys of one tenant or one
 * limit share a `{hash tag}`, so a cluster would also work).
 */
import { openRedisConnection, type RedisTimeouts } from "../coord/redis/connection.js";
import type { Logger } from "../logger.js";
import { createMemoryBudgetStore, createRedisBudgetStore, type BudgetStore } from "./budget-store.js";
import { createMemoryLimitStore, createRedisLimitStore, type LimitStore } from "./limit-store.js";

export interface CostBackend {
  readonly kind: "redis" | "memory";
  budget: BudgetStore;
  limits: LimitStore;
  close(): Promise<void>;
}

export interface CostBackendOptions {
  /** `settings.redis` when a URL is set; absent: process memory. */
  redis?: RedisTimeouts & {
    url: string;
    keyPrefix: string;
    /** Client name prefix in `CLIENT LIST` ("<name>:cost"). Default "capstan". */
    connectionName?: string;
  };
  logger: Logger;
}

export function createCostBackend(opts: CostBackendOptions): CostBackend {
  if (!opts.redis) {
    const budget = createMemoryBudgetStore();
    const limits = createMemoryLimitStore();
    return {
      kind: "memory",
      budget,
      limits,
      async close() {
        await Promise.all([budget.close(), limits.close()]);
      },
    };
  }
  const { keyPrefix, connectionName, ...rest } = opts.redis;
  const redis = openRedisConnection({
    ...rest,
    name: `${connectionName ?? "capstan"}:cost`,
    role: "cost",
    logger: opts.logger.child({ component: "cost.redis" }),
  });
  try {
    return {
      kind: "redis",
      budget: createRedisBudgetStore(redis, keyPrefix),
      limits: createRedisLimitStore(redis, keyPrefix),
      close: () => redis.close(true),
    };
  } catch (err) {
    // A store could not load its scripts: do not leave the connection open behind the error.
    void redis.close(false);
    throw err;
  }
}
