import { expect, it } from "vitest";
import { resolveModel } from "../agent/models.js";
import type { BudgetGuard } from "../cost/budget.js";
import { createMemoryLimitStore } from "../cost/limit-store.js";
import { createProviderLimiter } from "../cost/provider-limits.js";
import { isCapstanError } from "../errors.js";
import { silentLogger } from "../logger.js";
import { meteredCall } from "./metered-call.js";
import type { RunContext } from "./run-loop.js";

/** A call the shared provider window refuses is counted as a rate-limit rejection (scope "provider"). */
it("counts a provider-window refusal on the rate-limit hook", async () => {
  const limiter = createProviderLimiter({
    store: createMemoryLimitStore(),
    limits: { "scripted:*": { rpm: 1 } },
    logger: silentLogger(),
    maxWaitMs: 50,
  });
  // A tenant without a budget: the guard holds nothing (what createBudgetGuard answers then).
  const unbudgeted: BudgetGuard = {
    reserve: async () => ({
      id: "none",
      mode: "none",
      amount: 0,
      maxOutputTokens: undefined,
      settle: async () => {},
      release: async () => {},
    }),
    close: async () => {},
  };
  const rejected: string[] = [];
  const ctx = {
    run: { id: "r1", tenantId: "t1" },
    agent: { def: { model: "scripted:echo" }, model: resolveModel("scripted:echo", {}), tools: {} },
    services: { cost: { budget: unbudgeted, limiter, defaultMaxOutputTokens: 100 } },
    hooks: { onRateLimited: (scope: string) => rejected.push(scope) },
    logger: silentLogger(),
  } as unknown as RunContext;
  const input = {
    stepNo: 0,
    system: "",
    messages: [{ role: "user" as const, content: "hi" }],
    tools: {},
    deadline: Date.now() + 10_000,
    signal: new AbortController().signal,
    commit: async () => {},
  };
  await meteredCall(ctx, input); // the one request of the minute
  expect(rejected).toEqual([]);
  const err = await meteredCall(ctx, input).catch((e: unknown) => e);
  expect(isCapstanError(err, "rate_limited")).toBe(true);
  expect(rejected).toEqual(["provider"]);
  await limiter.close();
});
