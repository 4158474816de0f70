/**
 * Shared provider limits: two limiter instances ("workers", each with its own
 * Redis connection, one key prefix) in front of a real OpenAI-compatible test
 * server that counts what it receives. The window is 2 s instead of a minute
 * so the test is fast; the mechanism does not depend on the window length.
 */
import type { LanguageModel } from "ai";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { resolveModel } from "../../src/agent/models.js";
import { createCostBackend, type CostBackend } from "../../src/cost/backend.js";
import { createMemoryLimitStore, type LimitStore } from "../../src/cost/limit-store.js";
import {
  createProviderLimiter,
  limitedRetrySleep,
  type ProviderLimiter,
  type ProviderLimits,
} from "../../src/cost/provider-limits.js";
import { isCapstanError } from "../../src/errors.js";
import { silentLogger } from "../../src/logger.js";
import { callModel } from "../../src/worker/model-call.js";
import {
  startOpenAiTestServer,
  type OpenAiTestServer,
  type OpenAiTestReply,
} from "../support/openai-server.js";
import { until } from "../support/pg.js";
import { deleteKeys, randomPrefix, REDIS_URL } from "../support/redis.js";

const MODEL = "compatible:counted";
/** A fresh key prefix per test: windows of one test never leak into the next. */
let prefix = randomPrefix();
const prefixes: string[] = [];
const opened: { close(): Promise<void> }[] = [];

beforeEach(() => {
  prefix = randomPrefix();
  prefixes.push(prefix);
});
afterEach(async () => {
  for (const o of opened.splice(0).reverse()) await o.close();
});
afterAll(async () => {
  for (const p of prefixes) await deleteKeys(p);
});

function backend(url = REDIS_URL): CostBackend {
  const b = createCostBackend({ redis: { url, keyPrefix: prefix }, logger: silentLogger() });
  opened.push(b);
  return b;
}

/** `waits` collects the reason of every acquisition that had to wait (the limiter's onWait hook). */
function limiter(
  store: LimitStore,
  limits: ProviderLimits,
  extra: { maxWaitMs?: number; waits?: string[] } = {},
): ProviderLimiter {
  const { waits, ...rest } = extra;
  const l = createProviderLimiter({
    store,
    limits,
    logger: silentLogger(),
    ...rest,
    hooks: { onWait: (info) => void waits?.push(info.reason) },
  });
  opened.push(l);
  return l;
}

/** A test model server that logs (arrival time, tokens) of every request it answers. */
async function countingServer(
  reply: (index: number) => OpenAiTestReply = () => ({
    text: "ok",
    usage: { prompt_tokens: 80, completion_tokens: 20 },
  }),
): Promise<{
  server: OpenAiTestServer;
  seen: { at: number; tokens: number; status: number }[];
  model: LanguageModel;
}> {
  const seen: { at: number; tokens: number; status: number }[] = [];
  const server = await startOpenAiTestServer({
    handler: (_body, i) => {
      const r = reply(i);
      const tokens = "usage" in r && r.usage ? r.usage.prompt_tokens + r.usage.completion_tokens : 0;
      seen.push({ at: Date.now(), tokens, status: "status" in r ? r.status : 200 });
      return r;
    },
  });
  opened.push(server);
  const model = resolveModel(MODEL, { compatible: { baseURL: server.url } });
  return { server, seen, model };
}

/** The most tokens / requests the server saw in any window of `windowMs` (by arrival time). */
function busiestWindow(
  seen: { at: number; tokens: number }[],
  windowMs: number,
): { tokens: number; requests: number } {
  let tokens = 0;
  let requests = 0;
  for (const s of seen) {
    const inWindow = seen.filter((x) => x.at >= s.at && x.at < s.at + windowMs);
    tokens = Math.max(
      tokens,
      inWindow.reduce((n, x) => n + x.tokens, 0),
    );
    requests = Math.max(requests, inWindow.length);
  }
  return { tokens, requests };
}

/** One LLM call as the worker makes it: acquire, call (retries re-acquire; a 429 cools everyone), settle. */
async function limitedCall(l: ProviderLimiter, model: LanguageModel, estimate: number): Promise<number> {
  const signal = AbortSignal.timeout(30_000);
  const permit = await l.acquire({ model: MODEL, tokens: estimate, signal });
  try {
    const r = await callModel({
      model,
      system: "count",
      messages: [{ role: "user", content: "hi" }],
      tools: {},
      signal,
      retry: { maxRetries: 5, baseDelayMs: 50, maxDelayMs: 1_000 },
      onDelta: () => {},
      onRetry: (info) => {
        if (info.status === 429) void l.cooldown(MODEL, info.delayMs);
      },
      sleep: limitedRetrySleep(permit),
    });
    const actual = r.usage.inputTokens + r.usage.outputTokens;
    await permit.settle(actual);
    return actual;
  } catch (err) {
    await permit.release();
    throw err;
  }
}

describe("shared provider limits (Redis, two workers)", () => {
  it("two workers share 600 tokens per 2 s: the server never sees more; every call waits, none fails", async () => {
    const { seen, model } = await countingServer();
    const limits = { [MODEL]: { tpm: 600, windowMs: 2_000 } };
    const waits: string[] = [];
    const workers = [
      limiter(backend().limits, limits, { waits }),
      limiter(backend().limits, limits, { waits }),
    ];
    const results = await Promise.allSettled(
      Array.from({ length: 16 }, (_, i) => limitedCall(workers[i % 2]!, model, 100)),
    );
    expect(results.filter((r) => r.status === "rejected")).toEqual([]);
    expect(seen).toHaveLength(16);
    expect(busiestWindow(seen, 2_000).tokens).toBeLessThanOrEqual(600);
    // All 16 ask at once and 6 calls of 100 fill a window: the other 10 waited for capacity.
    expect(waits.filter((r) => r === "tpm").length).toBeGreaterThanOrEqual(10);
  });

  it("a provider 429 cools every worker down for Retry-After", async () => {
    const { seen, model } = await countingServer((i) =>
      i === 0
        ? { status: 429, retryAfterSeconds: 1 }
        : { text: "ok", usage: { prompt_tokens: 5, completion_tokens: 5 } },
    );
    const limits = { [MODEL]: { rpm: 1_000, windowMs: 60_000 } };
    const a = limiter(backend().limits, limits);
    const bWaits: string[] = [];
    const b = limiter(backend().limits, limits, { waits: bWaits });
    const first = limitedCall(a, model, 10);
    await until(() => seen[0]?.status === 429, { what: "the 429" });
    // Worker b sees the cool-down as soon as worker a has recorded it…
    await until(
      () =>
        b.acquire({ model: MODEL, tokens: 10, maxWaitMs: 0 }).then(
          async (p) => {
            await p.release();
            return false;
          },
          (e: unknown) => isCapstanError(e, "rate_limited"),
        ),
      { what: "worker b to see the cool-down" },
    );
    // …while no call reaches the provider, not even worker a's retry…
    expect(seen).toHaveLength(1);
    // …and waits it out instead of calling (one wait, for the cool-down, then admitted).
    const probes = bWaits.length;
    const permit = await b.acquire({ model: MODEL, tokens: 10, maxWaitMs: 5_000 });
    expect(bWaits.slice(probes)).toEqual(["cooldown"]);
    expect(permit.limited).toBe(true);
    await permit.release();
    await expect(first).resolves.toBe(10);
    expect(seen.map((s) => s.status)).toEqual([429, 200]);
  });

  it("waits are bounded: rate_limited after maxWaitMs, and an abort ends the wait at once", async () => {
    const limits = { [MODEL]: { tpm: 100, windowMs: 10_000 } };
    const l = limiter(backend().limits, limits);
    const p = await l.acquire({ model: MODEL, tokens: 100 });
    // The window frees only in 10 s: the 200 ms bound is what ends the wait.
    const err: unknown = await l
      .acquire({ model: MODEL, tokens: 50, maxWaitMs: 200 })
      .catch((e: unknown) => e);
    expect(isCapstanError(err, "rate_limited")).toBe(true);
    expect((err as Error).message).toMatch(/within 200 ms \(tpm\)/);
    const ac = new AbortController();
    const waiting = l.acquire({ model: MODEL, tokens: 50, signal: ac.signal });
    ac.abort(new Error("run cancelled"));
    await expect(waiting).rejects.toThrow("run cancelled");
    // Settling with the actual count frees the difference for others at once.
    await p.settle(40);
    expect((await l.acquire({ model: MODEL, tokens: 60, maxWaitMs: 0 })).limited).toBe(true);
  });

  it("an unlimited model passes at once; provider:* applies to every model of the provider", async () => {
    const l = limiter(backend().limits, { "compatible:*": { rpm: 1, windowMs: 10_000 } });
    expect(l.ruleFor("openai:gpt-4o")).toBeUndefined();
    expect((await l.acquire({ model: "openai:gpt-4o", tokens: 1e6 })).limited).toBe(false);
    expect(l.ruleFor("compatible:a")?.key).toBe("compatible:*");
    await l.acquire({ model: "compatible:a", tokens: 1 });
    await expect(l.acquire({ model: "compatible:b", tokens: 1, maxWaitMs: 50 })).rejects.toSatisfy((e) =>
      isCapstanError(e, "rate_limited"),
    );
  });

  it("with Redis down, limits still hold per process", async () => {
    const l = limiter(backend("redis://127.0.0.1:1").limits, { [MODEL]: { tpm: 100, windowMs: 10_000 } });
    await l.acquire({ model: MODEL, tokens: 100 });
    await expect(l.acquire({ model: MODEL, tokens: 1, maxWaitMs: 50 })).rejects.toSatisfy((e) =>
      isCapstanError(e, "rate_limited"),
    );
  });

  it("refuses an invalid limits config with config_invalid naming the field", () => {
    expect(() =>
      createProviderLimiter({
        store: createMemoryLimitStore(),
        limits: { [MODEL]: {} },
        logger: silentLogger(),
      }),
    ).toThrow(/models\.limits\.compatible:counted: set rpm, tpm, or both/);
    expect(() =>
      createProviderLimiter({
        store: createMemoryLimitStore(),
        limits: { "no-colon": { rpm: 1 } },
        logger: silentLogger(),
      }),
    ).toThrow(/models\.limits\.no-colon: expected "provider:model" or "provider:\*"/);
  });
});

describe("shared provider limits (memory store, two limiters in one process)", () => {
  it("3 requests per second: the server never sees a 4th in any second; requests larger than tpm run alone", async () => {
    const { seen, model } = await countingServer();
    const store = createMemoryLimitStore();
    opened.push(store);
    const limits = { [MODEL]: { rpm: 3, windowMs: 1_000 } };
    const workers = [limiter(store, limits), limiter(store, limits)];
    const results = await Promise.allSettled(
      Array.from({ length: 9 }, (_, i) => limitedCall(workers[i % 2]!, model, 100)),
    );
    expect(results.filter((r) => r.status === "rejected")).toEqual([]);
    expect(busiestWindow(seen, 1_000).requests).toBeLessThanOrEqual(3);

    const waits: string[] = [];
    const big = limiter(store, { "compatible:big": { tpm: 600, windowMs: 1_000 } }, { waits });
    await big.acquire({ model: "compatible:big", tokens: 100 });
    expect(waits).toEqual([]);
    // 1,000 > tpm: it waits for the window to empty, then is admitted (not refused forever).
    const p = await big.acquire({ model: "compatible:big", tokens: 1_000 });
    expect(waits).toEqual(["tpm"]);
    expect(p.limited).toBe(true);
  });
});
