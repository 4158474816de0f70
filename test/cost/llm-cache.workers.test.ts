/**
 * Issue #8, the LLM response cache through the API and a real worker process
 * (agent `cached` of test/fixtures/cost.config.ts: temperature 0, cache on).
 * The same deterministic conversation twice: the second run is answered from
 * the cache with zero model calls. A new agent version (other instructions:
 * `agentVersion` in src/agent/define.ts hashes name, model, instructions and
 * tools, and the cache key includes it) calls the model again. Also checks
 * what the API and /metrics say about it: run usage with cached input tokens
 * and estimated cost, per-step cache hit and tokens saved, cache metrics.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { obj, type Json } from "../ingress/harness.js";
import { parseProm, value } from "../observability/prom-text.js";
import { runIds, startCostCluster, type CostCluster } from "./workers-harness.js";

const QUESTION = "What is the capital of France?";
// Billed per call: 40 prompt tokens (8 of them served from the provider's prompt cache) + 6.
const USAGE = { prompt_tokens: 40, completion_tokens: 6, cached_tokens: 8 };
const MODEL = "compatible:cache-model";

let c: CostCluster;

beforeAll(async () => {
  c = await startCostCluster({ handler: () => ({ text: "Paris.", usage: USAGE }) });
});
afterAll(async () => {
  await c?.close();
});

async function runOnce(): Promise<Json> {
  const [id] = runIds([await c.createRun("cached", QUESTION)]);
  return c.settled(id!);
}

async function llmStep(runId: string): Promise<Json> {
  const r = await c.get(`/v1/runs/${runId}/steps`);
  expect(r.status, r.text).toBe(200);
  const steps = obj(r.body).data as Json[];
  expect(steps).toHaveLength(1);
  return steps[0]!;
}

describe("LLM response cache (API + worker process)", () => {
  it("a repeated conversation makes zero model calls; a new agent version calls again", async () => {
    const w1 = c.worker({ CAPSTAN_LOG_LEVEL: "info" });

    const first = await runOnce();
    expect(first.status, w1.output().slice(-3000)).toBe("succeeded");
    expect(c.model.requests).toHaveLength(1);
    // Run usage: provider-reported cached input tokens and the cost under the price table
    // (1 per M fresh input, 0.5 per M cached input, 4 per M output).
    expect(first.usage).toEqual({
      input_tokens: 40,
      output_tokens: 6,
      cached_input_tokens: 8,
      estimated_cost: (32 * 1 + 8 * 0.5 + 6 * 4) / 1e6,
    });
    expect(await llmStep(String(first.id))).toMatchObject({
      kind: "llm",
      model: MODEL,
      cache: { hit: false, tokens_saved: 0 },
      usage: { input_tokens: 40, output_tokens: 6, cached_input_tokens: 8 },
    });

    const second = await runOnce();
    expect(second.status).toBe("succeeded");
    expect(c.model.requests).toHaveLength(1); // answered from the cache: no model call
    expect(second.usage).toEqual({
      input_tokens: 0,
      output_tokens: 0,
      cached_input_tokens: 0,
      estimated_cost: 0,
    });
    expect(await llmStep(String(second.id))).toMatchObject({
      kind: "llm",
      model: MODEL,
      cache: { hit: true, tokens_saved: 46 },
      usage: { input_tokens: 0, output_tokens: 0 },
      result: { text: "Paris." },
    });
    const usage = await c.get("/v1/usage");
    expect((obj(usage.body).data as Json[]).find((r) => r.model === MODEL)).toMatchObject({
      llm_calls: 1,
      cache_hits: 1,
      tokens_saved: 46,
      total_tokens: 46,
    });

    // The worker's /metrics count the lookups and what the hit saved.
    const prom = parseProm(await (await fetch(`${await c.opsUrl(w1)}/metrics`)).text());
    expect(value(prom, "capstan_cache_requests_total", { cache: "llm", result: "miss" })).toBe(1);
    expect(value(prom, "capstan_cache_requests_total", { cache: "llm", result: "hit" })).toBe(1);
    expect(value(prom, "capstan_cache_tokens_saved_total", { model: MODEL })).toBe(46);

    // A new agent version: the same conversation is a miss and reaches the model.
    w1.kill("SIGTERM");
    expect((await w1.exited).code).toBe(0);
    c.worker({ COST_INSTRUCTIONS: "Answer in one short sentence, in French." });
    const third = await runOnce();
    expect(third.status).toBe("succeeded");
    expect(c.model.requests).toHaveLength(2);
    expect(JSON.stringify(c.model.requests[1]!.messages)).toContain("in French");
    expect(await llmStep(String(third.id))).toMatchObject({ cache: { hit: false, tokens_saved: 0 } });
    // …and its answer is cached under the new version.
    const fourth = await runOnce();
    expect(fourth.status).toBe("succeeded");
    expect(c.model.requests).toHaveLength(2);
  });
});
