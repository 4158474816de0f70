/**
 * Shared provider limits (docs/agent-sdk.md#provider-limits-and-prices): requests and tokens per window per
 * model (and provider account), enforced across all workers so that twenty
 * replicas together stay under the provider's quota. A worker WAITS for
 * capacity instead of calling (a bounded wait that honours its AbortSignal),
 * and a provider 429 sets a shared cool-down that every worker observes.
 *
 * Configuration (proposed home: `defineConfig({ models: { limits } })`, next
 * to the provider keys the quotas belong to):
 *
 *   limits: {
 *     "openai:gpt-4o-mini": { rpm: 5_000, tpm: 2_000_000 },
 *     "anthropic:*": { rpm: 50 },            // every model of the provider (one shared window)
 *     "compatible:llama3": { tpm: 600, windowMs: 2_000 },
 *   }
 *
 * `rpm`/`tpm` are per `windowMs` (default 60,000: per minute). A model uses
 * its exact entry, else its provider's `*` entry, else it is unlimited.
 *
 * Exactness: a request occupies the window from its admission until
 * `windowMs` after it finished (`settle`/`release` move it to its finish
 * time). Its arrival at the provider lies between the two, so a request
 * admitted because an earlier one left the window arrives at least
 * `windowMs` after that one arrived: the provider never sees more than the
 * limit in any window of that length, whatever the network latency. The
 * price is capacity held while calls run. (A crashed caller never finishes
 * its request; it leaves the window `windowMs` after admission.)
 *
 * While the shared store is unreachable, each worker enforces the limits on
 * its own (process memory): the fleet may then exceed them, and the
 * provider's 429s plus the model caller's retries cover the gap.
 */
import { randomBytes } from "node:crypto";
import { z } from "zod";
import { abortableSleep } from "../abort.js";
import { CapstanError, isCapstanError } from "../errors.js";
import type { Logger } from "../logger.js";
import { createMemoryLimitStore, type LimitStore, type WindowRule } from "./limit-store.js";

export const providerLimitSchema = z
  .strictObject({
    rpm: z.number().int().positive().optional().meta({ description: "Requests per window." }),
    tpm: z.number().int().positive().optional().meta({ description: "Tokens (input + output) per window." }),
    windowMs: z.number().int().min(100).max(3_600_000).optional().meta({ description: "Default 60000." }),
  })
  .refine((l) => l.rpm !== undefined || l.tpm !== undefined, { message: "set rpm, tpm, or both" });

/** Keys are `provider:model` labels (see `modelLabel`) or `provider:*`. */
export const providerLimitsSchema = z.record(
  z.string().regex(/^[a-z][a-z0-9._-]*:.+$/, 'expected "provider:model" or "provider:*"'),
  providerLimitSchema,
);

export type ProviderLimit = z.infer<typeof providerLimitSchema>;
export type ProviderLimits = z.infer<typeof providerLimitsSchema>;

export interface ProviderLimiterHooks {
  /** A call had to wait for capacity (once per wait, with the reason of the first refusal). */
  onWait?(info: { model: string; key: string; reason: "rpm" | "tpm" | "cooldown" }): void;
  /** A 429 set a shared cool-down. */
  onCooldown?(info: { model: string; key: string; ms: number }): void;
  /** The shared store failed; limits are enforced per process until it is back. */
  onDegraded?(info: { key: string; error: string }): void;
}

export interface ProviderLimiterOptions {
  /** Shared store (Redis via `createCostBackend`); memory for a single process. */
  store: LimitStore;
  /** Parsed with `providerLimitsSchema` (it is re-validated here). */
  limits: ProviderLimits | undefined;
  logger: Logger;
  /** Longest a call waits for capacity before failing with `rate_limited`. Default 300,000 ms. */
  maxWaitMs?: number;
  /** Added to every window, for providers whose windows are not quite what they say. Default 0. */
  marginMs?: number;
  /** Shortest and longest cool-down a 429 sets. Default 250 ms and 600,000 ms. */
  minCooldownMs?: number;
  maxCooldownMs?: number;
  /** An account id mixed into the window keys (e.g. a hash of the API key); "" by default. */
  account?: string;
  hooks?: ProviderLimiterHooks;
}

export interface AcquireInput {
  /** The model label, `provider:model`. */
  model: string;
  /** Tokens to count before the call (an estimate: `estimateLlmTokens(...).max` keeps the window exact). */
  tokens: number;
  signal?: AbortSignal;
  /** Override of `maxWaitMs` for this call (e.g. the time left before the run's deadline). */
  maxWaitMs?: number;
}

export interface ProviderPermit {
  /** Whether a limit applies to this model (false: every method is a no-op). */
  readonly limited: boolean;
  /** How long `acquire` waited, in ms. */
  readonly waitedMs: number;
  /**
   * Before retrying the call (e.g. from the model caller's retry sleep): wait
   * for capacity again, including any cool-down, and count the new attempt.
   */
  reacquire(signal?: AbortSignal): Promise<void>;
  /** After the call: count its actual tokens until a window after now. Never throws. */
  settle(actualTokens: number): Promise<void>;
  /** The call failed without usage: count the request (no tokens) until a window after now. Never throws. */
  release(): Promise<void>;
}

export interface ProviderLimiter {
  /** The window key and rule of a model, or undefined when it is unlimited. */
  ruleFor(model: string): { key: string; rule: WindowRule } | undefined;
  /** Wait for capacity for one call. Throws `rate_limited` after the max wait, or the signal's reason. */
  acquire(input: AcquireInput): Promise<ProviderPermit>;
  /** A provider answered 429: make every worker wait `ms` (clamped) before calling this model's window. */
  cooldown(model: string, ms: number): Promise<void>;
  close(): Promise<void>;
}

/** Longest sleep of a call waiting for tokens before it looks again (see `admit`). */
const TPM_RECHECK_MS = 1_000;

const NO_LIMIT: ProviderPermit = {
  limited: false,
  waitedMs: 0,
  reacquire: async () => {},
  settle: async () => {},
  release: async () => {},
};

export function createProviderLimiter(opts: ProviderLimiterOptions): ProviderLimiter {
  const log = opts.logger.child({ component: "cost.provider-limits" });
  const parsed = providerLimitsSchema.safeParse(opts.limits ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = ["models", "limits", ...(issue?.path ?? []).map(String)].join(".");
    // A bad record key reports "Invalid key in record"; say what is wrong with it.
    const message =
      (issue?.code === "invalid_key" ? issue.issues[0]?.message : issue?.message) ??
      "invalid provider limits";
    throw new CapstanError("config_invalid", `${field}: ${message}`, { fields: [{ field, message }] });
  }
  const limits = parsed.data;
  const maxWaitMs = opts.maxWaitMs ?? 300_000;
  const minCool = opts.minCooldownMs ?? 250;
  const maxCool = opts.maxCooldownMs ?? 600_000;
  const account = opts.account ?? "";
  const local = createMemoryLimitStore();
  let degraded = false;

  function ruleFor(model: string): { key: string; rule: WindowRule } | undefined {
    const provider = model.split(":", 1)[0] ?? model;
    const entry = limits[model] ? model : limits[`${provider}:*`] ? `${provider}:*` : undefined;
    if (entry === undefined) return undefined;
    const l = limits[entry]!;
    const windowMs = l.windowMs ?? 60_000;
    const margin = Math.max(0, opts.marginMs ?? 0);
    return {
      key: account ? `${account}:${entry}` : entry,
      rule: { rpm: l.rpm, tpm: l.tpm, windowMs: windowMs + margin },
    };
  }

  /** The shared store, or this process's store while the shared one fails. */
  async function onStore<T>(key: string, fn: (s: LimitStore) => Promise<T>): Promise<T> {
    try {
      const out = await fn(opts.store);
      if (degraded) {
        degraded = false;
        log.info("provider limit store is back: limits are shared again");
      }
      return out;
    } catch (err) {
      if (!isCapstanError(err, "redis_unavailable")) throw err;
      opts.hooks?.onDegraded?.({ key, error: err.message });
      if (!degraded) {
        degraded = true;
        log.warn({ err }, "provider limit store unavailable: enforcing limits per process until it is back");
      }
      return fn(local);
    }
  }

  async function admit(
    model: string,
    key: string,
    rule: WindowRule,
    id: string,
    tokens: number,
    signal: AbortSignal | undefined,
    waitBudgetMs: number,
  ): Promise<number> {
    const started = Date.now();
    let reported = false;
    for (;;) {
      signal?.throwIfAborted();
      const r = await onStore(key, (s) => s.acquire(key, rule, id, tokens));
      if (r.ok) return Date.now() - started;
      if (!reported) {
        reported = true;
        opts.hooks?.onWait?.({ model, key, reason: r.reason });
      }
      const left = waitBudgetMs - (Date.now() - started);
      // A tpm wait is computed as if every entry kept its tokens until it leaves the window,
      // but a call in flight counts its upper-bound estimate and gives the difference back
      // when it settles (at once, and usually most of it). Sleeping the computed time would
      // ignore that: a waiter queued behind one call in flight slept a whole window while
      // the capacity was free again milliseconds later. So a tpm waiter re-checks at least
      // every TPM_RECHECK_MS, and gives up only when its wait budget is spent.
      const mayFreeSooner = r.reason === "tpm";
      if (left <= 0 || (!mayFreeSooner && r.retryAfterMs > left)) {
        throw new CapstanError(
          "rate_limited",
          `no capacity under the provider limit for ${model} within ${waitBudgetMs} ms (${r.reason})`,
          { details: { model, reason: r.reason } },
        );
      }
      // Jitter spreads the waiters of all workers so they do not retry in lockstep.
      const wait = mayFreeSooner ? Math.min(r.retryAfterMs, TPM_RECHECK_MS) : r.retryAfterMs;
      const delay = Math.min(left, wait + Math.floor(Math.random() * 25));
      await abortableSleep(delay, signal);
    }
  }

  return {
    ruleFor,
    async acquire(input) {
      const found = ruleFor(input.model);
      if (!found) return NO_LIMIT;
      const { key, rule } = found;
      const tokens = Math.max(0, Math.ceil(input.tokens));
      const waitBudget = input.maxWaitMs ?? maxWaitMs;
      let id = randomBytes(8).toString("hex");
      const waitedMs = await admit(input.model, key, rule, id, tokens, input.signal, waitBudget);
      let done = false;
      const finish = async (n: number): Promise<void> => {
        if (done) return;
        done = true;
        try {
          await onStore(key, (s) => s.finish(key, rule, id, Math.max(0, Math.ceil(n))));
        } catch (err) {
          log.debug({ err, model: input.model }, "could not finish a provider window entry");
        }
      };
      return {
        limited: true,
        waitedMs,
        async reacquire(signal) {
          // The failed attempt ends now (it may have been counted by the provider); the retry is a new request.
          await finish(tokens);
          // Only an admitted id may be finished: if this wait fails, the permit stays done, so a
          // release() afterwards does not write a phantom entry into the shared window.
          const next = randomBytes(8).toString("hex");
          await admit(input.model, key, rule, next, tokens, signal ?? input.signal, waitBudget);
          id = next;
          done = false;
        },
        settle: (actual) => finish(actual),
        release: () => finish(0),
      };
    },
    async cooldown(model, ms) {
      const found = ruleFor(model);
      if (!found) return;
      const clamped = Math.min(maxCool, Math.max(minCool, Math.ceil(Number.isFinite(ms) ? ms : minCool)));
      opts.hooks?.onCooldown?.({ model, key: found.key, ms: clamped });
      try {
        await onStore(found.key, (s) => s.cooldown(found.key, clamped));
      } catch (err) {
        log.warn({ err, model }, "could not set a provider cool-down");
      }
    },
    async close() {
      await local.close();
    },
  };
}

/**
 * A `sleep` for the model caller's retry loop (`ModelCallInput.sleep`): the
 * backoff (or Retry-After) delay, then capacity again under the shared limit.
 */
export function limitedRetrySleep(
  permit: ProviderPermit,
): (ms: number, signal: AbortSignal) => Promise<void> {
  return async (ms, signal) => {
    await abortableSleep(ms, signal);
    await permit.reacquire(signal);
  };
}
