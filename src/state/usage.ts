/**
 * Token accounting and budgets in Postgres, the authoritative record of what
 * was spent (docs/architecture.md#cost-control). Redis only holds fast counters derived from this
 * (src/cost/budget.ts) and may be rebuilt from it at any time.
 *
 * Days and months are UTC. Budgeted tokens are input + output tokens (cached
 * input tokens are part of input tokens and count in full: a budget is in
 * tokens, not money; see src/cost/pricing.ts for money).
 */
import { CapstanError } from "../errors.js";
import type { Queryable } from "./db.js";

/** `YYYY-MM-DD` */
const DAY_RE = /^\d{4}-\d{2}-\d{2}$/;
const MAX_MODEL_CHARS = 256;

/** The UTC day of an instant, as `YYYY-MM-DD`. */
export function utcDay(at: Date | number = Date.now()): string {
  return new Date(at).toISOString().slice(0, 10);
}

/** True for a real calendar date written `YYYY-MM-DD` (so `2025-02-30` is false). */
export function isValidDay(s: string): boolean {
  if (!DAY_RE.test(s)) return false;
  const d = new Date(`${s}T00:00:00Z`);
  return !Number.isNaN(d.getTime()) && d.toISOString().slice(0, 10) === s;
}

function internal(message: string): CapstanError {
  return new CapstanError("internal", message);
}

function tokenCount(name: string, v: number | undefined): number {
  const n = v ?? 0;
  if (!Number.isSafeInteger(n) || n < 0) throw internal(`usage: ${name} must be an integer ≥ 0 (got ${n})`);
  return n;
}

export interface UsageDelta {
  tenantId: string;
  /** `provider:model` (see `modelLabel`). */
  model: string;
  /** UTC day `YYYY-MM-DD`; default: the database's current UTC day. */
  day?: string;
  inputTokens: number;
  outputTokens: number;
  cachedInputTokens?: number;
  /** The step was answered by the LLM response cache (no provider call; tokens are 0). */
  cacheHit?: boolean;
  /** Tokens a cache hit avoided (the cached response's input + output). */
  tokensSaved?: number;
}

/**
 * Add one LLM step's usage to the tenant's daily rollup. Meant to run inside
 * the transaction that journals the step (`appendLlmStep`), after the lease
 * check, so usage is recorded exactly once per journaled step: a step that
 * is not journaled (fenced-out zombie, crash) records nothing, and a replayed
 * step is never journaled twice. Locks one rollup row until commit; lock
 * order is run row, then rollup row, and nothing locks them the other way.
 */
export async function recordUsageTx(q: Queryable, u: UsageDelta): Promise<void> {
  const v = usageValues(u);
  await q.query(
    `INSERT INTO usage_daily AS u (tenant_id, day, model, input_tokens, output_tokens, cached_input_tokens,
                                   llm_calls, cache_hits, tokens_saved)
     VALUES ($1, coalesce($2::date, (now() AT TIME ZONE 'UTC')::date), $3, $4, $5, $6, $7, $8, $9)
     ${USAGE_ON_CONFLICT}`,
    [u.tenantId, u.day ?? null, u.model, ...v],
  );
}

/** The upsert's conflict clause: adds a step's counts to the day's row (table alias `u`). */
export const USAGE_ON_CONFLICT = `ON CONFLICT (tenant_id, day, model) DO UPDATE SET
       input_tokens = u.input_tokens + EXCLUDED.input_tokens,
       output_tokens = u.output_tokens + EXCLUDED.output_tokens,
       cached_input_tokens = u.cached_input_tokens + EXCLUDED.cached_input_tokens,
       llm_calls = u.llm_calls + EXCLUDED.llm_calls,
       cache_hits = u.cache_hits + EXCLUDED.cache_hits,
       tokens_saved = u.tokens_saved + EXCLUDED.tokens_saved,
       updated_at = now()`;

/**
 * A usage delta's validated columns, in order: input, output and cached
 * input tokens, LLM calls, cache hits, tokens saved.
 */
export function usageValues(u: Omit<UsageDelta, "tenantId">): number[] {
  const input = tokenCount("inputTokens", u.inputTokens);
  const output = tokenCount("outputTokens", u.outputTokens);
  const cached = tokenCount("cachedInputTokens", u.cachedInputTokens);
  const saved = tokenCount("tokensSaved", u.tokensSaved);
  if (u.model.length === 0 || u.model.length > MAX_MODEL_CHARS) {
    throw internal(`usage: model must be 1..${MAX_MODEL_CHARS} characters`);
  }
  if (u.day !== undefined && !isValidDay(u.day)) throw internal(`usage: day ${u.day} is not YYYY-MM-DD`);
  const hit = u.cacheHit === true;
  return [input, output, cached, hit ? 0 : 1, hit ? 1 : 0, saved];
}

export interface UsageCounts {
  inputTokens: number;
  outputTokens: number;
  cachedInputTokens: number;
  llmCalls: number;
  cacheHits: number;
  tokensSaved: number;
}

export interface UsageRow extends UsageCounts {
  day: string;
  model: string;
  /** Estimated cost (when a price table was given): null when the model has no price. */
  estimatedCost?: number | null;
}

export interface UsageTotals extends UsageCounts {
  /** input + output: what budgets count. */
  totalTokens: number;
  /** Sum of the priced rows' costs (when a price table was given). */
  estimatedCost?: number;
  /** Models in range without a price (when a price table was given and some lack one). */
  unpricedModels?: string[];
}

export interface UsageReport {
  from: string;
  to: string;
  /** One row per day and model with usage, ordered by day then model. */
  rows: UsageRow[];
  totals: UsageTotals;
}

/** Turns a model's usage into an estimated cost, or null when it has no price (src/cost/pricing.ts). */
export type CostFn = (model: string, usage: UsageCounts) => number | null;

const emptyCounts = (): UsageCounts => ({
  inputTokens: 0,
  outputTokens: 0,
  cachedInputTokens: 0,
  llmCalls: 0,
  cacheHits: 0,
  tokensSaved: 0,
});

/**
 * A tenant's usage per day and model for the UTC days `from..to` (inclusive,
 * `YYYY-MM-DD`), with totals. The caller bounds the range (the route allows
 * 366 days), which bounds the rows to days × models. With `cost`, rows and
 * totals carry an estimated cost.
 */
export async function readUsage(
  q: Queryable,
  tenantId: string,
  range: { from: string; to: string; cost?: CostFn },
): Promise<UsageReport> {
  if (!isValidDay(range.from) || !isValidDay(range.to))
    throw internal("readUsage: from/to must be YYYY-MM-DD");
  const r = await q.query<{
    day: string;
    model: string;
    input_tokens: number;
    output_tokens: number;
    cached_input_tokens: number;
    llm_calls: number;
    cache_hits: number;
    tokens_saved: number;
  }>(
    `SELECT to_char(day, 'YYYY-MM-DD') AS day, model, input_tokens, output_tokens, cached_input_tokens,
            llm_calls, cache_hits, tokens_saved
     FROM usage_daily
     WHERE tenant_id = $1 AND day BETWEEN $2::date AND $3::date
     ORDER BY day, model`,
    [tenantId, range.from, range.to],
  );
  const totals: UsageTotals = { ...emptyCounts(), totalTokens: 0 };
  const unpriced = new Set<string>();
  let cost = 0;
  const rows = r.rows.map((x): UsageRow => {
    const row: UsageRow = {
      day: x.day,
      model: x.model,
      inputTokens: Number(x.input_tokens),
      outputTokens: Number(x.output_tokens),
      cachedInputTokens: Number(x.cached_input_tokens),
      llmCalls: Number(x.llm_calls),
      cacheHits: Number(x.cache_hits),
      tokensSaved: Number(x.tokens_saved),
    };
    totals.inputTokens += row.inputTokens;
    totals.outputTokens += row.outputTokens;
    totals.cachedInputTokens += row.cachedInputTokens;
    totals.llmCalls += row.llmCalls;
    totals.cacheHits += row.cacheHits;
    totals.tokensSaved += row.tokensSaved;
    if (range.cost) {
      row.estimatedCost = range.cost(row.model, row);
      if (row.estimatedCost === null) unpriced.add(row.model);
      else cost += row.estimatedCost;
    }
    return row;
  });
  totals.totalTokens = totals.inputTokens + totals.outputTokens;
  if (range.cost) {
    totals.estimatedCost = roundCost(cost);
    if (unpriced.size > 0) totals.unpricedModels = [...unpriced].sort();
  }
  return { from: range.from, to: range.to, rows, totals };
}

/** Money rounded to 1e-6 (sums of many small floats otherwise print as 0.30000000000000004). */
export function roundCost(v: number): number {
  return Math.round(v * 1e6) / 1e6;
}

export interface ThreadUsage {
  /** Runs of the thread still retained (finished runs are pruned after `retention.finishedRunsMs`). */
  runs: number;
  inputTokens: number;
  outputTokens: number;
  cachedInputTokens: number;
}

/** A thread's usage: the sum over its (retained) runs. A foreign or unknown thread is `not_found`. */
export async function threadUsage(q: Queryable, tenantId: string, threadId: string): Promise<ThreadUsage> {
  const r = await q.query<{ runs: number; input_tokens: number; output_tokens: number; cached: number }>(
    `SELECT count(r.id) AS runs,
            coalesce(sum(r.input_tokens), 0)::bigint AS input_tokens,
            coalesce(sum(r.output_tokens), 0)::bigint AS output_tokens,
            coalesce(sum(r.cached_input_tokens), 0)::bigint AS cached
     FROM threads t LEFT JOIN runs r ON r.thread_id = t.id
     WHERE t.id = $2 AND t.tenant_id = $1
     GROUP BY t.id`,
    [tenantId, threadId],
  );
  const row = r.rows[0];
  if (!row) throw new CapstanError("not_found", `thread ${threadId} not found`);
  return {
    runs: Number(row.runs),
    inputTokens: Number(row.input_tokens),
    outputTokens: Number(row.output_tokens),
    cachedInputTokens: Number(row.cached),
  };
}

export interface TenantBudget {
  /** Tokens per UTC day; null: none. */
  daily: number | null;
  /** Tokens per UTC calendar month; null: none. */
  monthly: number | null;
}

function budgetValue(name: string, v: number | null): number | null {
  if (v !== null && (!Number.isSafeInteger(v) || v < 0)) {
    throw new CapstanError("validation_failed", `${name} must be an integer ≥ 0 or null (got ${v})`, {
      fields: [{ field: name, message: "must be an integer ≥ 0 or null" }],
    });
  }
  return v;
}

/**
 * Set a tenant's token budgets. A field left undefined is unchanged; null
 * removes that budget. Takes effect on every worker within the budget
 * guard's cache time (`budgetCacheMs`, default 5 s). Unknown tenant: `not_found`.
 */
export async function setTenantBudget(
  q: Queryable,
  tenantId: string,
  budget: { daily?: number | null; monthly?: number | null },
): Promise<TenantBudget> {
  const daily = budget.daily === undefined ? null : budgetValue("daily", budget.daily);
  const monthly = budget.monthly === undefined ? null : budgetValue("monthly", budget.monthly);
  const r = await q.query<{ daily_token_budget: number | null; monthly_token_budget: number | null }>(
    `UPDATE tenants SET
       daily_token_budget = CASE WHEN $2 THEN $3::bigint ELSE daily_token_budget END,
       monthly_token_budget = CASE WHEN $4 THEN $5::bigint ELSE monthly_token_budget END
     WHERE id = $1
     RETURNING daily_token_budget, monthly_token_budget`,
    [tenantId, budget.daily !== undefined, daily, budget.monthly !== undefined, monthly],
  );
  const row = r.rows[0];
  if (!row) throw new CapstanError("not_found", `tenant ${tenantId} not found`);
  return { daily: nullableNumber(row.daily_token_budget), monthly: nullableNumber(row.monthly_token_budget) };
}

function nullableNumber(v: number | string | null): number | null {
  return v === null ? null : Number(v);
}

export interface BudgetStatus extends TenantBudget {
  /** The UTC day the sums are for. */
  day: string;
  /** Input + output tokens recorded on `day`. */
  dayUsed: number;
  /** Input + output tokens recorded from the first of `day`'s month through `day`. */
  monthUsed: number;
}

/**
 * A tenant's budgets and what it used on `day` and in `day`'s month to date
 * (default: today, UTC, by this process's clock). One query over at most 31
 * days × models of the rollup's primary key. Null for an unknown tenant.
 */
export async function readBudgetStatus(
  q: Queryable,
  tenantId: string,
  day: string = utcDay(),
  opts: { onlyIfBudgeted?: boolean } = {},
): Promise<BudgetStatus | null> {
  if (!isValidDay(day)) throw internal(`readBudgetStatus: day ${day} is not YYYY-MM-DD`);
  // With onlyIfBudgeted, a tenant without budgets skips the month's rollup
  // (the lateral subquery's outer-only condition becomes a one-time filter):
  // the enqueue path asks this for every run.
  const r = await q.query<{
    daily_token_budget: number | null;
    monthly_token_budget: number | null;
    day_used: number;
    month_used: number;
  }>(
    `SELECT t.daily_token_budget, t.monthly_token_budget,
            coalesce(x.day_used, 0)::bigint AS day_used, coalesce(x.month_used, 0)::bigint AS month_used
     FROM tenants t
     LEFT JOIN LATERAL (
       SELECT sum(u.input_tokens + u.output_tokens) FILTER (WHERE u.day = $2::date) AS day_used,
              sum(u.input_tokens + u.output_tokens) AS month_used
       FROM usage_daily u
       WHERE u.tenant_id = t.id AND u.day BETWEEN date_trunc('month', $2::date)::date AND $2::date
         AND (NOT $3::boolean OR t.daily_token_budget IS NOT NULL OR t.monthly_token_budget IS NOT NULL)
     ) x ON true
     WHERE t.id = $1`,
    [tenantId, day, opts.onlyIfBudgeted === true],
  );
  const row = r.rows[0];
  if (!row) return null;
  return {
    day,
    daily: nullableNumber(row.daily_token_budget),
    monthly: nullableNumber(row.monthly_token_budget),
    dayUsed: Number(row.day_used),
    monthUsed: Number(row.month_used),
  };
}
