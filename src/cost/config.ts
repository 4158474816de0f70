/**
 * Configuration pieces of cost control, for the owners of the config schemas
 * to plug in (see the wiring notes in ./index.ts):
 *
 * - `costModelSettings`: two optional keys of `defineConfig({ models })`,
 *   next to the provider keys the quotas and prices belong to:
 *   `models.limits` (./provider-limits.ts) and `models.prices` (./pricing.ts).
 * - `costSettingsSchema`: server settings (`server.cost` in the config file),
 *   tunables with defaults.
 */
import { z } from "zod";
import { DEFAULT_MAX_OUTPUT_TOKENS } from "./estimate.js";
import { priceTableSchema, type PriceTable } from "./pricing.js";
import { providerLimitsSchema, type ProviderLimits } from "./provider-limits.js";

/** Spread into the `models` zod object: `z.object({ openai, anthropic, ..., ...costModelSettings })`. */
export const costModelSettings = {
  limits: providerLimitsSchema.optional(),
  prices: priceTableSchema.optional(),
};

/** Add to `ModelProviderSettings`. */
export interface CostModelSettings {
  limits?: ProviderLimits;
  prices?: PriceTable;
}

const posInt = z.number().int().positive();

export const COST_SETTINGS_DEFAULTS = {
  reservationTtlMs: 30_000,
  resyncMs: 60_000,
  budgetCacheMs: 5_000,
  defaultMaxOutputTokens: DEFAULT_MAX_OUTPUT_TOKENS,
  providerMaxWaitMs: 300_000,
} as const;

/** A `cost` section for `settingsSchema` (src/config/config.ts). */
export const costSettingsSchema = z
  .strictObject({
    /** A budget reservation lapses this long after its holder stopped extending it (crash). */
    reservationTtlMs: posInt.min(1_000).default(COST_SETTINGS_DEFAULTS.reservationTtlMs),
    /** How often the shared budget counters are merged with Postgres. */
    resyncMs: posInt.min(1_000).default(COST_SETTINGS_DEFAULTS.resyncMs),
    /** How long a worker caches a tenant's budget settings. */
    budgetCacheMs: z.number().int().nonnegative().default(COST_SETTINGS_DEFAULTS.budgetCacheMs),
    /** The output cap assumed (and passed to the model) for budgeted calls of agents without maxOutputTokens. */
    defaultMaxOutputTokens: posInt.default(COST_SETTINGS_DEFAULTS.defaultMaxOutputTokens),
    /** Longest wait for provider capacity before a call fails with `rate_limited`. */
    providerMaxWaitMs: posInt.default(COST_SETTINGS_DEFAULTS.providerMaxWaitMs),
  })
  .default(COST_SETTINGS_DEFAULTS);

export type CostSettings = z.infer<typeof costSettingsSchema>;
