import type { FastifyInstance } from "fastify";
import { costFn, type PriceTable } from "../../cost/pricing.js";
import { CapstanError } from "../../errors.js";
import {
  readBudgetStatus,
  readUsage,
  threadUsage,
  utcDay,
  type UsageCounts,
  type UsageRow,
  type UsageTotals,
} from "../../state/usage.js";
import { principalOf, type IngressContext } from "../context.js";
import { usageQuery, type ThreadUsageJson, type UsageReportJson } from "../schemas.js";
import { parseOr400, pathId } from "../validate.js";

export { usageQuery };

/** Longest `from..to` range, in days (inclusive). */
export const MAX_USAGE_RANGE_DAYS = 366;
const DAY_MS = 86_400_000;

export interface UsageRouteOptions {
  /** The price table (`models.prices`): rows and totals then carry `estimated_cost`. */
  prices?: PriceTable;
}

type CountsJson = {
  input_tokens: number;
  output_tokens: number;
  cached_input_tokens: number;
  total_tokens: number;
  llm_calls: number;
  cache_hits: number;
  tokens_saved: number;
};

const countsView = (c: UsageCounts): CountsJson => ({
  input_tokens: c.inputTokens,
  output_tokens: c.outputTokens,
  cached_input_tokens: c.cachedInputTokens,
  total_tokens: c.inputTokens + c.outputTokens,
  llm_calls: c.llmCalls,
  cache_hits: c.cacheHits,
  tokens_saved: c.tokensSaved,
});

const rowView = (r: UsageRow) => ({
  day: r.day,
  model: r.model,
  ...countsView(r),
  ...(r.estimatedCost !== undefined ? { estimated_cost: r.estimatedCost } : {}),
});

const totalsView = (t: UsageTotals) => ({
  ...countsView(t),
  ...(t.estimatedCost !== undefined ? { estimated_cost: t.estimatedCost } : {}),
  ...(t.unpricedModels ? { unpriced_models: t.unpricedModels } : {}),
});

function badQuery(field: string, message: string): CapstanError {
  return new CapstanError("validation_failed", `invalid request: ${field}: ${message}`, {
    fields: [{ field, message }],
  });
}

/** The `from..to` range with defaults, checked: from ≤ to, at most MAX_USAGE_RANGE_DAYS days. */
export function usageRange(query: unknown, now: number = Date.now()): { from: string; to: string } {
  const q = parseOr400(usageQuery, query ?? {}, "query");
  const to = q.to ?? utcDay(now);
  const from = q.from ?? `${to.slice(0, 7)}-01`;
  const days = (Date.parse(`${to}T00:00:00Z`) - Date.parse(`${from}T00:00:00Z`)) / DAY_MS + 1;
  if (days < 1) throw badQuery("query.from", `must be on or before to (${to})`);
  if (days > MAX_USAGE_RANGE_DAYS) {
    throw badQuery(
      "query.from",
      `the range ${from}..${to} spans ${days} days; at most ${MAX_USAGE_RANGE_DAYS}`,
    );
  }
  return { from, to };
}

/**
 * Usage endpoints (docs/http-api.md#usage-and-caches), tenant-scoped:
 * - `GET /usage?from=YYYY-MM-DD&to=YYYY-MM-DD`: token usage per UTC day and
 *   model, totals, estimated cost (with a price table) and the tenant's budgets;
 * - `GET /threads/:id/usage`: a thread's usage, summed over its retained runs.
 */
export function usageRoutes(
  app: FastifyInstance,
  ctx: Pick<IngressContext, "db">,
  opts: UsageRouteOptions = {},
): void {
  const cost = costFn(opts.prices);

  app.get("/usage", async (req): Promise<UsageReportJson> => {
    const { tenantId } = principalOf(req);
    const range = usageRange(req.query);
    const [report, budget] = await Promise.all([
      readUsage(ctx.db, tenantId, { ...range, ...(cost ? { cost } : {}) }),
      readBudgetStatus(ctx.db, tenantId),
    ]);
    return {
      from: report.from,
      to: report.to,
      data: report.rows.map(rowView),
      totals: totalsView(report.totals),
      budget: {
        daily_token_budget: budget?.daily ?? null,
        monthly_token_budget: budget?.monthly ?? null,
        day: budget?.day ?? utcDay(),
        day_used: budget?.dayUsed ?? 0,
        month_used: budget?.monthUsed ?? 0,
      },
    };
  });

  app.get("/threads/:id/usage", async (req): Promise<ThreadUsageJson> => {
    const { tenantId } = principalOf(req);
    const threadId = pathId(req.params, "thread");
    const u = await threadUsage(ctx.db, tenantId, threadId);
    return {
      thread_id: threadId,
      runs: u.runs,
      input_tokens: u.inputTokens,
      output_tokens: u.outputTokens,
      cached_input_tokens: u.cachedInputTokens,
      total_tokens: u.inputTokens + u.outputTokens,
    };
  });
}
