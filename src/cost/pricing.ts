/**
 * An optional price table turning tokens into an estimated cost
 * (docs/agent-sdk.md#provider-limits-and-prices).
 * Proposed home: `defineConfig({ models: { prices } })`:
 *
 *   prices: {
 *     "openai:gpt-4o-mini": { inputPerMTok: 0.15, outputPerMTok: 0.6, cachedInputPerMTok: 0.075 },
 *     "anthropic:*": { inputPerMTok: 3, outputPerMTok: 15 },
 *   }
 *
 * Prices are per million tokens, in whatever currency the operator uses (the
 * API reports a bare number). Cached input tokens are a subset of input
 * tokens and are charged at `cachedInputPerMTok` (default: the input price).
 * A model uses its exact entry, else its provider's `*` entry, else it has
 * no price (its cost is null, never a guess).
 */
import { z } from "zod";
import type { Queryable } from "../state/db.js";
import { roundCost, type CostFn, type UsageCounts } from "../state/usage.js";

const price = z.number().nonnegative().max(1_000_000);

export const modelPriceSchema = z.strictObject({
  inputPerMTok: price,
  outputPerMTok: price,
  cachedInputPerMTok: price.optional(),
});

export const priceTableSchema = z.record(
  z.string().regex(/^[a-z][a-z0-9._-]*:.+$/, 'expected "provider:model" or "provider:*"'),
  modelPriceSchema,
);

export type ModelPrice = z.infer<typeof modelPriceSchema>;
export type PriceTable = z.infer<typeof priceTableSchema>;

export function priceFor(prices: PriceTable, model: string): ModelPrice | undefined {
  const exact = prices[model];
  if (exact) return exact;
  const provider = model.split(":", 1)[0] ?? model;
  return prices[`${provider}:*`];
}

/** Estimated cost of some usage of a model, or null without a price. */
export function estimateCost(
  prices: PriceTable,
  model: string,
  usage: Pick<UsageCounts, "inputTokens" | "outputTokens" | "cachedInputTokens">,
): number | null {
  const p = priceFor(prices, model);
  if (!p) return null;
  const cached = Math.min(usage.cachedInputTokens, usage.inputTokens);
  const fresh = usage.inputTokens - cached;
  const cost =
    (fresh * p.inputPerMTok +
      cached * (p.cachedInputPerMTok ?? p.inputPerMTok) +
      usage.outputTokens * p.outputPerMTok) /
    1_000_000;
  return roundCost(cost);
}

/** A `CostFn` for `readUsage`, or undefined when there are no prices. */
export function costFn(prices: PriceTable | undefined): CostFn | undefined {
  if (!prices || Object.keys(prices).length === 0) return undefined;
  return (model, usage) => estimateCost(prices, model, usage);
}

/**
 * Estimated cost of one run's LLM calls: its journaled LLM steps summed per
 * model (the model is in each step's request summary, see
 * src/state/journal.ts), priced with `estimateCost`. 0 for a run without
 * calls; null when a model that spent tokens has no price (or the step
 * predates the model being recorded). One indexed query (steps' primary key).
 */
export async function runCost(q: Queryable, runId: string, prices: PriceTable): Promise<number | null> {
  const r = await q.query<{ model: string | null; i: string; o: string; c: string }>(
    `SELECT input->>'model' AS model, coalesce(sum(input_tokens), 0) AS i, coalesce(sum(output_tokens), 0) AS o,
            coalesce(sum(cached_input_tokens), 0) AS c
       FROM steps WHERE run_id = $1 AND kind = 'llm' GROUP BY 1`,
    [runId],
  );
  let total = 0;
  for (const row of r.rows) {
    const usage = {
      inputTokens: Number(row.i),
      outputTokens: Number(row.o),
      cachedInputTokens: Number(row.c),
    };
    if (usage.inputTokens + usage.outputTokens === 0) continue; // cache hits cost nothing, priced or not
    const cost = row.model === null ? null : estimateCost(prices, row.model, usage);
    if (cost === null) return null;
    total += cost;
  }
  return roundCost(total);
}
