/**
 * Cost control (DESIGN §8): token accounting (src/state/usage.ts), tenant
 * budgets, shared provider limits, LLM and pure-tool caches, prices.
 *
 * Wiring (one LLM step, in this order):
 * 1. `llmCache.lookup(...)`: a hit is journaled as the step (0 tokens,
 *    `recordUsageTx` with `cacheHit`, `tokensSaved`); no budget, no limit, no call.
 * 2. `estimateLlmTokens(...)`, then `budget.reserve(...)` (may throw
 *    `budget_exceeded`: the run fails with that code).
 * 3. `limiter.acquire({ tokens: estimate.max })` (waits; may throw `rate_limited`).
 * 4. The call, with `maxOutputTokens: reservation.maxOutputTokens ?? agent's`,
 *    `sleep: limitedRetrySleep(permit)`, and `limiter.cooldown()` on a 429.
 * 5. `permit.settle(actual)`; journal the step (+ `recordUsageTx` in its
 *    transaction); in a `finally`: `reservation.settle(actual)` (or
 *    `release()` when the call failed); then `lookup.store(result)`.
 * Pure tools: `toolCache.lookup(...)` before running, `store(value)` after a
 * success; `ctx.invalidate(tags)` → `toolCache.invalidate(tenantId, tags)`.
 * Config: `normalizeToolCache` / `normalizeAgentCache` in the definition
 * validators; `costModelSettings` in the `models` schema; `costSettingsSchema`
 * as `settings.cost`.
 */
export { createCostBackend, type CostBackend, type CostBackendOptions } from "./backend.js";
export {
  assertWithinBudget,
  createBudgetGuard,
  isOverBudget,
  type BudgetGuard,
  type BudgetGuardHooks,
  type BudgetGuardOptions,
  type BudgetPeriod,
  type BudgetVerdict,
  type Reservation,
  type ReserveInput,
} from "./budget.js";
export { createMemoryBudgetStore, createRedisBudgetStore, type BudgetStore } from "./budget-store.js";
export {
  canonicalJson,
  createLlmCache,
  createToolCache,
  llmCacheKey,
  type CacheableAgent,
  type CacheableTool,
  type CachedLlmResult,
  type CacheEvent,
  type CacheHooks,
  type LlmCache,
  type LlmCacheLookup,
  type ToolCache,
  type ToolCacheLookup,
} from "./cache.js";
export {
  CACHE_LIMITS,
  normalizeAgentCache,
  normalizeToolCache,
  tagProblem,
  validateCacheConfig,
  type AgentCacheConfig,
  type AgentCacheOptions,
  type ToolCacheConfig,
} from "./cache-config.js";
export {
  COST_SETTINGS_DEFAULTS,
  costModelSettings,
  costSettingsSchema,
  type CostModelSettings,
  type CostSettings,
} from "./config.js";
export {
  DEFAULT_MAX_OUTPUT_TOKENS,
  estimateLlmTokens,
  exactEstimate,
  type TokenEstimate,
} from "./estimate.js";
export {
  createMemoryLimitStore,
  createRedisLimitStore,
  type LimitStore,
  type WindowRule,
} from "./limit-store.js";
export {
  costFn,
  estimateCost,
  priceFor,
  priceTableSchema,
  type ModelPrice,
  type PriceTable,
} from "./pricing.js";
export {
  createProviderLimiter,
  limitedRetrySleep,
  providerLimitsSchema,
  type ProviderLimiter,
  type ProviderLimiterOptions,
  type ProviderLimits,
  type ProviderPermit,
} from "./provider-limits.js";
