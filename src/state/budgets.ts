/**
 * A tenant's budget periods and the check the enqueue transaction makes
 * (`enqueueRun` in src/state/scheduler.ts): is a budget used up right now,
 * according to Postgres (docs/architecture.md#cost-control). Only SQL over
 * state tables and date arithmetic: the admission of LLM calls against the
 * same budgets, with reservations shared through Redis, is src/cost/budget.ts.
 */
import { CapstanError } from "../errors.js";
import type { Queryable } from "./db.js";
import { readBudgetStatus, utcDay, type BudgetStatus, type TenantBudget } from "./usage.js";

export type BudgetPeriod = "day" | "month";

export interface BudgetPeriodWindow {
  name: BudgetPeriod;
  /** Tokens allowed in the period. */
  budget: number;
  /** When the period ends (the next UTC day or month starts), ms since the epoch. */
  endsAt: number;
  /** `endsAt` as an ISO timestamp. */
  resetsAt: string;
}

/** The budgeted periods (UTC day, UTC month) that contain `nowMs`; none when the tenant has no budget. */
export function budgetPeriods(budget: TenantBudget, nowMs: number): BudgetPeriodWindow[] {
  const d = new Date(nowMs);
  const y = d.getUTCFullYear();
  const m = d.getUTCMonth();
  const out: BudgetPeriodWindow[] = [];
  const add = (name: BudgetPeriod, limit: number, endsAt: number): void => {
    out.push({ name, budget: limit, endsAt, resetsAt: new Date(endsAt).toISOString() });
  };
  if (budget.daily !== null) add("day", budget.daily, Date.UTC(y, m, d.getUTCDate() + 1));
  if (budget.monthly !== null) add("month", budget.monthly, Date.UTC(y, m + 1, 1));
  return out;
}

/** What a status says was used in the period. */
export function usedIn(s: BudgetStatus, period: BudgetPeriod): number {
  return period === "day" ? s.dayUsed : s.monthUsed;
}

export type BudgetVerdict =
  { over: false } | { over: true; period: BudgetPeriod; budget: number; used: number; resetsAt: string };

/**
 * Is a budget of the tenant used up right now (used ≥ budget, per Postgres)?
 * One query; for the enqueue transaction, before a new run is inserted.
 */
export async function isOverBudget(
  q: Queryable,
  tenantId: string,
  at: number = Date.now(),
): Promise<BudgetVerdict> {
  const s = await readBudgetStatus(q, tenantId, utcDay(at), { onlyIfBudgeted: true });
  if (!s) return { over: false };
  for (const p of budgetPeriods(s, at)) {
    const used = usedIn(s, p.name);
    if (used >= p.budget) return { over: true, period: p.name, budget: p.budget, used, resetsAt: p.resetsAt };
  }
  return { over: false };
}

/** Throws `budget_exceeded` (402) when `isOverBudget`. */
export async function assertWithinBudget(
  q: Queryable,
  tenantId: string,
  at: number = Date.now(),
): Promise<void> {
  const v = await isOverBudget(q, tenantId, at);
  if (!v.over) return;
  const which = v.period === "day" ? "daily" : "monthly";
  throw new CapstanError(
    "budget_exceeded",
    `the tenant's ${which} token budget of ${v.budget} is used up (${v.used} used); it resets at ${v.resetsAt}`,
    { details: { period: v.period, budget: v.budget, used: v.used, resetsAt: v.resetsAt } },
  );
}
