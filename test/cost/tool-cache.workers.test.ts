/**
 * Issue #8, the pure-tool cache through the API and a real worker process
 * (agent `tools` of test/fixtures/cost.config.ts). `catalog` is pure and
 * cached with the tag "catalog"; every real execution returns a fresh token,
 * so a repeated token is a cache hit and a new one a re-execution. `restock`
 * invalidates the tag from inside a tool (`ctx.invalidate`); the admin
 * endpoint `POST /v1/cache/invalidate` does it from outside. A cache on a
 * non-pure tool is refused when the worker loads its config.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { obj, type Json } from "../ingress/harness.js";
import { parseProm, value } from "../observability/prom-text.js";
import type { ChatCompletionsBody, OpenAiTestReply } from "../support/openai-server.js";
import { spawnCapstan } from "../support/procs.js";
import { REDIS_URL } from "../support/redis.js";
import { runIds, startCostCluster, type CostCluster } from "./workers-harness.js";

/** "catalog A" → call catalog({sku: "A"}); "restock A" → restock; after a tool result: "done". */
function script(body: ChatCompletionsBody): OpenAiTestReply {
  const msgs = body.messages ?? [];
  if (msgs.at(-1)?.role === "tool") return { text: "done" };
  const user = msgs.filter((m) => m.role === "user").at(-1);
  const text = typeof user?.content === "string" ? user.content : JSON.stringify(user?.content ?? "");
  const [name, sku] = text.split(" ");
  return { toolCalls: [{ name: name ?? "catalog", arguments: { sku: sku ?? "A" } }] };
}

let c: CostCluster;

beforeAll(async () => {
  c = await startCostCluster({ handler: script });
});
afterAll(async () => {
  await c?.close();
});

/** The steps API's `cache` of each tool step, in the order the runs were made. */
const stepCaches: unknown[] = [];

/** Run `input` to success; the tool step's result. */
async function toolResult(input: string): Promise<Json> {
  const [id] = runIds([await c.createRun("tools", input)]);
  const run = await c.settled(id!);
  expect(run.status, JSON.stringify(run.error)).toBe("succeeded");
  const steps = obj((await c.get(`/v1/runs/${id!}/steps`)).body).data as Json[];
  const tool = steps.find((s) => s.kind === "tool")!;
  expect(tool.status).toBe("completed");
  stepCaches.push(tool.cache);
  return obj(tool.result);
}

describe("pure-tool cache with tags (API + worker process)", () => {
  it("re-executes after ctx.invalidate(tag) in a tool and after POST /v1/cache/invalidate", async () => {
    const w = c.worker({ CAPSTAN_LOG_LEVEL: "info" });
    const t1 = (await toolResult("catalog A")).token;
    expect(typeof t1).toBe("string");
    expect((await toolResult("catalog A")).token).toBe(t1); // served from the cache

    expect(await toolResult("restock A")).toEqual({ sku: "A", restocked: true }); // ctx.invalidate("catalog")
    const t2 = (await toolResult("catalog A")).token;
    expect(t2).not.toBe(t1); // re-executed
    expect((await toolResult("catalog A")).token).toBe(t2);

    const inv = await c.post("/v1/cache/invalidate", { tags: ["catalog"] });
    expect(inv.status, inv.text).toBe(200);
    expect(inv.body).toEqual({ invalidated: ["catalog"] });
    const t3 = (await toolResult("catalog A")).token;
    expect(t3).not.toBe(t2); // re-executed
    expect(t3).not.toBe(t1);
    expect((await toolResult("catalog A")).token).toBe(t3);

    // 6 catalog lookups: 3 misses (the first, and after each invalidation), 3 hits.
    const prom = parseProm(await (await fetch(`${await c.opsUrl(w)}/metrics`)).text());
    expect(value(prom, "capstan_cache_requests_total", { cache: "tool", result: "miss" })).toBe(3);
    expect(value(prom, "capstan_cache_requests_total", { cache: "tool", result: "hit" })).toBe(3);
    // The same outcomes on the steps API; the (uncacheable) restock step has none.
    const miss = { hit: false, tokens_saved: 0 };
    const hit = { hit: true, tokens_saved: 0 };
    expect(stepCaches).toEqual([miss, hit, null, miss, hit, miss, hit]);
  });

  it("a cache on an idempotent tool is refused when the worker loads its config", async () => {
    const p = spawnCapstan(["--config", "test/fixtures/cost-bad.config.ts", "worker", "--no-migrate"], {
      DATABASE_URL: c.t.url,
      REDIS_URL,
      CAPSTAN_REDIS_PREFIX: c.prefix,
    });
    const { code } = await p.exited;
    expect(code).toBe(2);
    expect(p.output()).toMatch(
      /tool\(\): cache: only "pure" tools may be cached, and this tool is "idempotent"/,
    );
    // The message names the file, so the operator knows what to fix.
    expect(p.output()).toContain("test/fixtures/cost-bad.config.ts: failed to load");
  });
});
