/**
 * Tenant token budgets (per UTC day and per UTC month), checked before every
 * LLM call and holding across all workers at once (docs/architecture.md#cost-control).
 *
 * ## How
 *
 * Before a call, the worker reserves an estimate of its tokens
 * (src/cost/estimate.ts: `max` is an upper bound, `likely` a realistic
 * figure). The reservation is admitted atomically against
 * `used + reserved + amount ≤ budget` for every budgeted period, in one place
 * all workers share (src/cost/budget-store.ts: a Lua script in Redis). After
 * the call the reservation is settled with the actual tokens (added to
 * `used`) or released. Postgres (`usage_daily`) is authoritative: `used` is
 * seeded from it when missing (first use, Redis flushed/restarted, new
 * period) and merged with it (max) every `resyncMs`. A reservation expires
 * after `reservationTtlMs` unless its holder extends it (every ttl/3 while
 * the call runs), so a crashed worker's reservation lapses by itself.
 *
 * Admission tries the upper bound first. Only when that does not fit but the
 * likely estimate does (the last stretch of a budget) does a call go ahead
 * on the likely estimate, and then only one such call per tenant per worker
 * process at a time (a local slot held until it settles). When not even the
 * likely estimate fits, but would without the calls in flight (whose
 * reservations are upper bounds and mostly settle lower), the call waits for
 * them (re-checking, up to `inFlightWaitMs`) rather than failing a run while
 * budget remains; a budget spent by settled usage alone is refused at once.
 *
 * ## The bound: spend ≤ budget + one in-flight call per worker
 *
 * - Every admitted reservation fitted: at all times used + reserved ≤ budget.
 * - A call reserved at its upper bound spends at most what it reserved.
 * - A call reserved at its likely estimate may spend up to its upper bound,
 *   i.e. overshoot by at most (max − likely) ≤ one call; there is at most one
 *   such call per worker and tenant at a time.
 * - A settlement replaces the reservation by the actual spend, never less.
 * Hence spend ≤ budget + Σ over workers of one call. (Given that `max` is a
 * true bound: the call must pass `reservation.maxOutputTokens` to the model,
 * and input tokens ≤ UTF-8 bytes + overheads, true for byte-level BPE
 * tokenizers. A settlement above `max` is logged as a warning.)
 *
 * Where the bound is loosened, by design, and by how much:
 * - Redis down (every store error): fall back to Postgres only — a call is
 *   admitted if Postgres' usage + this worker's own in-flight reservations +
 *   the likely estimate fit, and budgeted calls of a tenant are serialised
 *   per worker process (the same local slot). Other workers' in-flight calls
 *   are invisible, but each has at most one: spend ≤ budget + one call per
 *   worker again, once the calls admitted before the outage have finished.
 * - A reservation whose holder cannot extend it for a whole TTL (process
 *   stalled, or Redis unreachable that long) lapses while its call may still
 *   run: that call is uncounted until it settles.
 * - Settlement happens after the step is journaled (in a `finally`, so a
 *   call whose journal write failed is still counted: it was paid for). The
 *   local slot is held until then, which is what lets the Postgres fallback
 *   see the previous call. A worker killed between its journal commit and its
 *   settlement leaves that call out of the shared counter until the next
 *   merge with Postgres (≤ `resyncMs`); a seed taken in that instant counts
 *   it twice instead (conservative). The max-merge never loses counts.
 */
import { randomBytes } from "node:crypto";
import { CapstanError, isCapstanError } from "../errors.js";
import type { Logger } from "../logger.js";
import type { Queryable } from "../state/db.js";
import { budgetPeriods, usedIn, type BudgetPeriod } from "../state/budgets.js";
import { readBudgetStatus, utcDay, type BudgetStatus, type TenantBudget } from "../state/usage.js";
import type { BudgetPeriodSpec, BudgetStore, StoreReserveResult } from "./budget-store.js";
import { exactEstimate, type TokenEstimate } from "./estimate.js";
import { abortableSleep } from "../abort.js";
import { KeyedSlots } from "./util.js";

export interface BudgetGuardHooks {
  /** A reservation was refused (`budget_exceeded`). */
  onRefused?(info: { tenantId: string; period: BudgetPeriod }): void;
  /** The shared store failed and the Postgres-only fallback was used. */
  onDegraded?(info: { tenantId: string; error: string }): void;
}

export interface BudgetGuardOptions {
  db: Queryable;
  store: BudgetStore;
  logger: Logger;
  /** A reservation lapses this long after its last extension. Default 30,000 ms. */
  reservationTtlMs?: number;
  /** How often the shared `used` counters are merged with Postgres. Default 60,000 ms. */
  resyncMs?: number;
  /** How long a tenant's budget settings are cached per process. Default 5,000 ms. */
  budgetCacheMs?: number;
  /** Longest wait for the per-tenant local slot (last stretch, fallback). Default 300,000 ms. */
  slotWaitMs?: number;
  /**
   * When a call does not fit only because of calls in flight (their
   * reservations are upper bounds, and most settle lower), wait this long at
   * most for them to settle before refusing. Default 60,000 ms; 0 refuses
   * at once. A budget that is truly spent (used alone leaves no room) is
   * refused at once either way.
   */
  inFlightWaitMs?: number;
  /** How often such a wait re-checks. Default 250 ms. */
  inFlightPollMs?: number;
  /** Clock (tests). */
  now?: () => number;
  hooks?: BudgetGuardHooks;
}

export interface ReserveInput {
  tenantId: string;
  runId: string;
  stepNo: number;
  /** From `estimateLlmTokens`, or a plain token count (treated as exact). */
  estimate: TokenEstimate | number;
  /** Aborts a wait for the local slot. */
  signal?: AbortSignal;
}

export interface Reservation {
  readonly id: string;
  /**
   * - `none`: the tenant has no budget; nothing is held (settle/release are no-ops).
   * - `shared`: admitted at the upper bound in the shared store.
   * - `serialised`: admitted at the likely estimate; holds this process's slot for the tenant.
   * - `fallback`: the shared store is down; admitted against Postgres; holds the slot.
   */
  readonly mode: "none" | "shared" | "serialised" | "fallback";
  /** Tokens held. */
  readonly amount: number;
  /**
   * The output cap the call must pass to the model (`maxOutputTokens`) for the
   * bound to hold; undefined when no budget applies (keep the agent's setting).
   */
  readonly maxOutputTokens: number | undefined;
  /**
   * After the call answered and its step was journaled (or the journal write
   * failed): record its actual tokens. Never throws; idempotent.
   */
  settle(usage: { inputTokens: number; outputTokens: number } | number): Promise<void>;
  /** The call did not happen or failed without usage. Never throws; idempotent. */
  release(): Promise<void>;
}

export interface BudgetGuard {
  /** Reserve before an LLM call; throws `budget_exceeded` (CapstanError) with details. */
  reserve(input: ReserveInput): Promise<Reservation>;
  /** Stops extension timers of live reservations (they then lapse). */
  close(): Promise<void>;
}

interface Period {
  name: BudgetPeriod;
  key: string;
  budget: number;
  usedTtlMs: number;
  resetsAt: string;
}

const MAX_CACHED_TENANTS = 10_000;

/** The tenant's budgeted periods now, with their keys in the shared store. */
function periodsOf(tenantId: string, budget: TenantBudget, nowMs: number): Period[] {
  const day = utcDay(nowMs);
  return budgetPeriods(budget, nowMs).map((p) => ({
    name: p.name,
    key: p.name === "day" ? `{${tenantId}}:d:${day}` : `{${tenantId}}:m:${day.slice(0, 7)}`,
    budget: p.budget,
    usedTtlMs: p.endsAt - nowMs + 3_600_000,
    resetsAt: p.resetsAt,
  }));
}

/** Internal: refused only because of reservations in flight; `reserve` waits and retries. */
class InFlightFull extends Error {
  readonly used: number;
  readonly reserved: number;
  constructor(
    readonly period: Period,
    res: { used: number; reserved: number },
  ) {
    super("budget held by calls in flight");
    this.used = res.used;
    this.reserved = res.reserved;
  }
}

function exceeded(p: Period, used: number, needed: number): CapstanError {
  const which = p.name === "day" ? "daily" : "monthly";
  return new CapstanError(
    "budget_exceeded",
    `the tenant's ${which} token budget of ${p.budget} is used up (${used} used or in flight, ` +
      `the next call needs about ${needed}); it resets at ${p.resetsAt}`,
    { details: { period: p.name, budget: p.budget, used, needed, resetsAt: p.resetsAt } },
  );
}

const usedOf = (s: BudgetStatus, p: Period): number => usedIn(s, p.name);

export function createBudgetGuard(opts: BudgetGuardOptions): BudgetGuard {
  const log = opts.logger.child({ component: "cost.budget" });
  const ttlMs = opts.reservationTtlMs ?? 30_000;
  const resyncMs = opts.resyncMs ?? 60_000;
  const budgetCacheMs = opts.budgetCacheMs ?? 5_000;
  const slotWaitMs = opts.slotWaitMs ?? 300_000;
  const inFlightWaitMs = opts.inFlightWaitMs ?? 60_000;
  const inFlightPollMs = opts.inFlightPollMs ?? 250;
  const now = opts.now ?? Date.now;
  const slots = new KeyedSlots();
  const budgets = new Map<string, { budget: TenantBudget; expiresAt: number }>();
  /** This process's live reservations per tenant (the fallback counts them). */
  const outstanding = new Map<string, Map<string, number>>();
  const live = new Set<{ stop(): void }>();
  let degradedLogged = false;

  function cacheBudget(tenantId: string, budget: TenantBudget): void {
    budgets.delete(tenantId);
    budgets.set(tenantId, { budget, expiresAt: now() + budgetCacheMs });
    while (budgets.size > MAX_CACHED_TENANTS) {
      const oldest = budgets.keys().next().value;
      if (oldest === undefined) break;
      budgets.delete(oldest);
    }
  }

  async function readStatus(tenantId: string, day: string): Promise<BudgetStatus> {
    // Tenants without a budget (the common case) skip the month's rollup: nothing uses it for them.
    const s = await readBudgetStatus(opts.db, tenantId, day, { onlyIfBudgeted: true });
    // An unknown tenant has no budget (its runs cannot exist; be lenient, not wrong).
    const status = s ?? { day, daily: null, monthly: null, dayUsed: 0, monthUsed: 0 };
    cacheBudget(tenantId, { daily: status.daily, monthly: status.monthly });
    return status;
  }

  async function budgetOf(tenantId: string, day: string): Promise<TenantBudget> {
    const hit = budgets.get(tenantId);
    if (hit && hit.expiresAt > now()) return hit.budget;
    const s = await readStatus(tenantId, day);
    return { daily: s.daily, monthly: s.monthly };
  }

  /** One store reservation, seeding the counters from Postgres when the store asks (≤ 3 rounds). */
  async function storeReserve(
    tenantId: string,
    day: string,
    periods: Period[],
    id: string,
    amount: number,
  ): Promise<Exclude<StoreReserveResult, { kind: "seed" }>> {
    let specs: BudgetPeriodSpec[] = periods.map((p) => ({
      key: p.key,
      budget: p.budget,
      usedTtlMs: p.usedTtlMs,
    }));
    for (let round = 0; round < 3; round++) {
      const r = await opts.store.reserve(specs, id, amount, { ttlMs, resyncMs });
      if (r.kind !== "seed") return r;
      const status = await readStatus(tenantId, day);
      specs = periods.map((p, i) => ({
        key: p.key,
        budget: p.budget,
        usedTtlMs: p.usedTtlMs,
        ...(r.periods.includes(i) ? { seed: usedOf(status, p) } : {}),
      }));
    }
    throw new CapstanError("internal", "budget counters could not be seeded from Postgres");
  }

  function track(tenantId: string, id: string, amount: number): () => void {
    let mine = outstanding.get(tenantId);
    if (!mine) {
      mine = new Map();
      outstanding.set(tenantId, mine);
    }
    mine.set(id, amount);
    return () => {
      const m = outstanding.get(tenantId);
      if (!m) return;
      m.delete(id);
      if (m.size === 0) outstanding.delete(tenantId);
    };
  }

  function makeReservation(
    r: { tenantId: string; runId: string; stepNo: number },
    mode: Reservation["mode"],
    amount: number,
    est: TokenEstimate,
    id: string,
    periods: Period[],
    unlock?: () => void,
  ): Reservation {
    const keys = periods.map((p) => p.key);
    const untrack = mode === "none" ? () => {} : track(r.tenantId, id, amount);
    let done = false;
    let timer: NodeJS.Timeout | undefined;
    const handle = {
      stop: () => {
        if (timer) clearInterval(timer);
        timer = undefined;
      },
    };
    if (mode === "shared" || mode === "serialised") {
      timer = setInterval(
        () => {
          opts.store.extend(keys, id, ttlMs).then(
            (ok) => {
              if (!ok && !done) {
                log.warn(
                  { runId: r.runId, stepNo: r.stepNo },
                  "budget reservation lapsed while its call ran",
                );
              }
            },
            (err: unknown) => log.debug({ err, runId: r.runId }, "could not extend a budget reservation"),
          );
        },
        Math.max(10, Math.floor(ttlMs / 3)),
      );
      timer.unref();
      live.add(handle);
    }
    const finish = async (actual: number): Promise<void> => {
      if (done) return;
      done = true;
      handle.stop();
      live.delete(handle);
      untrack();
      try {
        if (mode === "shared" || mode === "serialised") await opts.store.settle(keys, id, actual);
      } catch (err) {
        log.warn({ err, runId: r.runId, stepNo: r.stepNo, actual }, "could not settle a budget reservation");
      } finally {
        unlock?.();
      }
    };
    return {
      id,
      mode,
      amount,
      maxOutputTokens: mode === "none" || est.maxOutputTokens <= 0 ? undefined : est.maxOutputTokens,
      settle(usage) {
        const actual =
          typeof usage === "number"
            ? usage
            : Math.max(0, usage.inputTokens) + Math.max(0, usage.outputTokens);
        const tokens = Number.isFinite(actual) ? Math.max(0, Math.ceil(actual)) : 0;
        if (mode !== "none" && tokens > est.max) {
          log.warn(
            { runId: r.runId, stepNo: r.stepNo, actual: tokens, estimateMax: est.max },
            "an LLM call used more tokens than its estimated upper bound; budgets may overshoot by the difference",
          );
        }
        return finish(tokens);
      },
      release: () => finish(0),
    };
  }

  async function fallback(
    input: ReserveInput,
    est: TokenEstimate,
    day: string,
    periods: Period[],
    id: string,
    cause: unknown,
  ): Promise<Reservation> {
    opts.hooks?.onDegraded?.({ tenantId: input.tenantId, error: String(cause) });
    if (!degradedLogged) {
      degradedLogged = true;
      log.warn(
        { err: cause },
        "budget store unavailable: checking budgets against Postgres, one budgeted call per tenant at a time in this worker",
      );
    }
    const unlock = await slots.acquire(input.tenantId, {
      timeoutMs: slotWaitMs,
      what: "the tenant's budget slot",
      ...(input.signal ? { signal: input.signal } : {}),
    });
    try {
      const status = await readStatus(input.tenantId, day);
      let mine = 0;
      for (const a of outstanding.get(input.tenantId)?.values() ?? []) mine += a;
      for (const p of periods) {
        const used = usedOf(status, p) + mine;
        if (used + est.likely > p.budget) {
          opts.hooks?.onRefused?.({ tenantId: input.tenantId, period: p.name });
          throw exceeded(p, used, est.likely);
        }
      }
      return makeReservation(input, "fallback", est.likely, est, id, periods, unlock);
    } catch (err) {
      unlock();
      throw err;
    }
  }

  async function shared(
    input: ReserveInput,
    est: TokenEstimate,
    day: string,
    periods: Period[],
    id: string,
  ): Promise<Reservation> {
    const refuse = (res: { period: number; used: number; reserved: number }): never => {
      const p = periods[res.period] ?? periods[0]!;
      // Room that calls in flight hold (at their upper bound) may come back when they settle.
      if (res.reserved > 0 && p.budget - res.used >= est.likely) throw new InFlightFull(p, res);
      opts.hooks?.onRefused?.({ tenantId: input.tenantId, period: p.name });
      throw exceeded(p, res.used + res.reserved, est.likely);
    };
    const first = await storeReserve(input.tenantId, day, periods, id, est.max);
    degradedLogged = false;
    if (first.kind === "admitted") return makeReservation(input, "shared", est.max, est, id, periods);
    if (first.budget - first.used - first.reserved < est.likely) return refuse(first);

    // The last stretch of the budget: the likely estimate fits, the bound does not.
    // One such call per tenant in this process at a time.
    const unlock = await slots.acquire(input.tenantId, {
      timeoutMs: slotWaitMs,
      what: "the tenant's budget slot",
      ...(input.signal ? { signal: input.signal } : {}),
    });
    try {
      const again = await storeReserve(input.tenantId, day, periods, id, est.max);
      if (again.kind === "admitted") {
        unlock();
        return makeReservation(input, "shared", est.max, est, id, periods);
      }
      if (again.budget - again.used - again.reserved < est.likely) return refuse(again);
      const likely = await storeReserve(input.tenantId, day, periods, id, est.likely);
      if (likely.kind !== "admitted") return refuse(likely);
      return makeReservation(input, "serialised", est.likely, est, id, periods, unlock);
    } catch (err) {
      unlock();
      throw err;
    }
  }

  return {
    async reserve(input) {
      const est = typeof input.estimate === "number" ? exactEstimate(input.estimate) : input.estimate;
      const t = now();
      const day = utcDay(t);
      const budget = await budgetOf(input.tenantId, day);
      const periods = periodsOf(input.tenantId, budget, t);
      const id = `${input.runId}:${input.stepNo}:${randomBytes(4).toString("hex")}`;
      if (periods.length === 0) return makeReservation(input, "none", 0, est, id, periods);
      const waitUntil = now() + inFlightWaitMs;
      for (;;) {
        try {
          return await shared(input, est, day, periods, id);
        } catch (err) {
          if (isCapstanError(err, "redis_unavailable")) return fallback(input, est, day, periods, id, err);
          if (!(err instanceof InFlightFull)) throw err;
          if (now() >= waitUntil) {
            opts.hooks?.onRefused?.({ tenantId: input.tenantId, period: err.period.name });
            throw exceeded(err.period, err.used + err.reserved, est.likely);
          }
          await abortableSleep(Math.min(inFlightPollMs, Math.max(1, waitUntil - now())), input.signal);
        }
      }
    },
    async close() {
      for (const h of live) h.stop();
      live.clear();
    },
  };
}
