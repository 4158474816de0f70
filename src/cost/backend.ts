/**
 * The stores behind budgets and provider limits for one process: Redis when
 * configured (shared by every worker), else process memory (embedded mode).
 * One Redis connection serves both; `close()` closes it.
 */
import type { Logger } from "../logger.js";
import { createMemoryBudgetStore, createRedisBudgetStore, type BudgetStore } from "./budget-store.js";
import { createMemoryLimitStore, createRedisLimitStore, type LimitStore } from "./limit-store.js";
import { createCostRedis, type CostRedisOptions } from "./redis.js";

export interface CostBackend {
  readonly kind: "redis" | "memory";
  budget: BudgetStore;
  limits: LimitStore;
  close(): Promise<void>;
}

export interface CostBackendOptions {
  /** `settings.redis` when a URL is set; absent: process memory. */
  redis?: { url: string; keyPrefix: string } & Partial<Omit<CostRedisOptions, "url" | "logger">>;
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
  const { url, keyPrefix, ...rest } = opts.redis;
  const redis = createCostRedis({ ...rest, url, logger: opts.logger });
  return {
    kind: "redis",
    budget: createRedisBudgetStore(redis, keyPrefix),
    limits: createRedisLimitStore(redis, keyPrefix),
    close: () => redis.close(),
  };
}
