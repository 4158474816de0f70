/**
 * The LLM response cache and the pure-tool cache, on both coordination
 * backends (real Redis under a random prefix, and memory), plus the config
 * rules that refuse caches which must not exist.
 */
import type { LanguageModel, ModelMessage } from "ai";
import { z } from "zod";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { agentVersion, defineAgent, tool } from "../../src/agent/define.js";
import { resolveModel } from "../../src/agent/models.js";
import type { ToolDefinition } from "../../src/agent/types.js";
import { createMemoryCoordination } from "../../src/coord/memory.js";
import { createRedisCoordination } from "../../src/coord/redis/index.js";
import type { Coordination } from "../../src/coord/types.js";
import {
  createLlmCache,
  createToolCache,
  llmCacheKey,
  type CacheableAgent,
  type CacheableTool,
  type CacheEvent,
} from "../../src/cost/cache.js";
import { normalizeAgentCache, normalizeToolCache, validateCacheConfig } from "../../src/cost/cache-config.js";
import { CapstanError, isCapstanError } from "../../src/errors.js";
import { silentLogger } from "../../src/logger.js";
import { assistantMessage, toolMessage, type LlmResponse } from "../../src/worker/messages.js";
import { callModel } from "../../src/worker/model-call.js";
import { startOpenAiTestServer, type OpenAiTestServer } from "../support/openai-server.js";
import { deleteKeys, randomPrefix, REDIS_URL } from "../support/redis.js";

const prefix = randomPrefix();
const opened: { close(): Promise<void> }[] = [];
afterEach(async () => {
  for (const o of opened.splice(0).reverse()) await o.close();
});
afterAll(async () => {
  await deleteKeys(prefix);
});

const EVENTS = { maxLen: 100, ttlMs: 60_000 };
const backends: [string, () => Coordination][] = [
  [
    "redis",
    () =>
      createRedisCoordination({ url: REDIS_URL, keyPrefix: prefix, logger: silentLogger(), events: EVENTS }),
  ],
  ["memory", () => createMemoryCoordination({ events: EVENTS })],
];
function open(make: () => Coordination): Coordination {
  const c = make();
  opened.push(c);
  return c;
}

const configError = (fn: () => unknown): CapstanError => {
  try {
    fn();
  } catch (err) {
    if (isCapstanError(err, "config_invalid")) return err;
    throw err;
  }
  throw new Error("expected config_invalid");
};

describe("cache configuration is validated at definition/load time", () => {
  it("refuses a cache on idempotent and side-effect tools, with a clear error", () => {
    for (const effect of ["idempotent", "side-effect"]) {
      const e = configError(() =>
        normalizeToolCache({ ttlMs: 60_000 }, effect, 'defineAgent() agent "support" tool "refund"'),
      );
      expect(e.message).toContain(
        'defineAgent() agent "support" tool "refund": cache: only "pure" tools may be cached',
      );
      expect(e.message).toContain(`this tool is "${effect}"`);
      expect(e.fields?.map((f) => f.field)).toEqual(["cache"]);
      expect(e.fields?.[0]?.message).toContain("never be served from a cache");
    }
  });

  it("accepts a pure tool's cache and checks its options", () => {
    const tags = (args: { id: number }) => [`order:${args.id}`];
    expect(normalizeToolCache({ ttlMs: 60_000, tags: ["a", "b"], version: "2" }, "pure", "tool()")).toEqual({
      ttlMs: 60_000,
      tags: ["a", "b"],
      version: "2",
    });
    expect(normalizeToolCache({ ttlMs: 1_000, tags }, "pure", "tool()")?.tags).toBe(tags);
    expect(normalizeToolCache(undefined, "side-effect", "tool()")).toBeUndefined();
    expect(normalizeToolCache(false, "side-effect", "tool()")).toBeUndefined();
    expect(configError(() => normalizeToolCache({}, "pure", "tool()")).fields?.[0]?.field).toBe(
      "cache.ttlMs",
    );
    expect(configError(() => normalizeToolCache({ ttlMs: 10 }, "pure", "tool()")).message).toMatch(/1000/);
    expect(configError(() => normalizeToolCache({ ttlMs: 1e12 }, "pure", "tool()")).fields?.[0]?.field).toBe(
      "cache.ttlMs",
    );
    expect(
      configError(() => normalizeToolCache({ ttlMs: 5_000, ttl: 1 }, "pure", "tool()")).fields?.[0]?.field,
    ).toBe("cache.ttl");
    expect(
      configError(() => normalizeToolCache({ ttlMs: 5_000, tags: ["ok", ""] }, "pure", "tool()")).fields?.[0]
        ?.field,
    ).toBe("cache.tags[1]");
    expect(
      configError(() => normalizeToolCache({ ttlMs: 5_000, tags: "x" }, "pure", "tool()")).fields?.[0]?.field,
    ).toBe("cache.tags");
  });

  it("the LLM cache needs temperature: 0, set explicitly", () => {
    expect(normalizeAgentCache({ llm: true }, 0, "a")).toEqual({ llm: { ttlMs: 86_400_000 } });
    expect(normalizeAgentCache({ llm: { ttlMs: 5_000 } }, 0, "a")).toEqual({ llm: { ttlMs: 5_000 } });
    expect(normalizeAgentCache({ llm: false }, undefined, "a")).toBeUndefined();
    expect(configError(() => normalizeAgentCache({ llm: true }, undefined, 'agent "x"')).message).toBe(
      'agent "x": cache.llm: the LLM response cache needs deterministic settings: set temperature: 0 on the agent ' +
        "(temperature is unset, so the provider samples)",
    );
    expect(configError(() => normalizeAgentCache({ llm: true }, 0.7, "a")).message).toMatch(
      /temperature is 0.7/,
    );
    expect(configError(() => normalizeAgentCache({ responses: true }, 0, "a")).fields?.[0]?.field).toBe(
      "cache.responses",
    );
  });

  it("validateCacheConfig checks a whole loaded agent", () => {
    const base = {
      name: "support",
      temperature: 0,
      tools: { lookup: { effect: "pure", cache: { ttlMs: 5_000 } } },
    };
    expect(() => validateCacheConfig({ ...base, cache: { llm: true } })).not.toThrow();
    const e = configError(() =>
      validateCacheConfig({
        ...base,
        tools: { ...base.tools, refund: { effect: "side-effect", cache: { ttlMs: 5_000 } } },
      }),
    );
    expect(e.message).toMatch(
      /^config agent "support" tool "refund": cache: only "pure" tools may be cached/,
    );
    expect(() => validateCacheConfig({ ...base, temperature: 1, cache: { llm: true } })).toThrow(
      /temperature: 0/,
    );
  });
});

/* ------------------------------------------------------------------------- */

const lookupTool = (calls: { n: number }): ToolDefinition & CacheableTool => ({
  ...tool({
    description: "Look up an order",
    input: z.object({ id: z.number() }),
    effect: "pure",
    run: ({ id }) => {
      calls.n++;
      return { id, status: "shipped" };
    },
  }),
  cache: normalizeToolCache(
    { ttlMs: 60_000, tags: (a: { id: number }) => ["orders", `order:${a.id}`] },
    "pure",
    "tool()",
  )!,
});

function cachedAgent(
  instructions: string,
  tools: Record<string, ToolDefinition>,
  model: LanguageModel,
): CacheableAgent {
  const a = defineAgent({ name: "support", model, instructions, tools, temperature: 0 });
  // Until normalizeTool/normalizeAgent keep `cache` (the loader wiring), attach the validated configs here.
  return { ...a, tools, cache: normalizeAgentCache({ llm: { ttlMs: 60_000 } }, a.temperature, "test")! };
}

/**
 * One run of the reasoning loop, as the worker would do it with the caches
 * wired in: per LLM step, look the response up (hit: no call) or call and
 * store; per tool call, look the pure tool's result up or run it and store.
 */
async function runConversation(
  coord: Coordination,
  agent: CacheableAgent,
  tenantId: string,
  events: CacheEvent[],
): Promise<{ text: string; saved: number }> {
  const hooks = { onCache: (e: CacheEvent) => events.push(e) };
  const llm = createLlmCache({ cache: coord.cache, logger: silentLogger(), hooks });
  const tools = createToolCache({ cache: coord.cache, logger: silentLogger(), hooks });
  const convo: ModelMessage[] = [{ role: "user", content: "where is order 7?" }];
  let saved = 0;
  for (let step = 0; step < 5; step++) {
    const lc = await llm.lookup({ tenantId, agent, messages: convo });
    let response: LlmResponse;
    if (lc.hit) {
      response = lc.hit.response;
      saved += lc.tokensSaved;
    } else {
      const r = await callModel({
        model: agent.model,
        system: agent.instructions,
        messages: convo,
        tools: {
          lookup: {
            description: "Look up an order",
            inputSchema: z.object({ id: z.number() }),
          },
        },
        signal: AbortSignal.timeout(10_000),
        temperature: 0,
        onDelta: () => {},
        onRetry: () => {},
      });
      response = r.response;
      await lc.store(r);
    }
    convo.push(assistantMessage(response));
    if (response.toolCalls.length === 0) return { text: response.text, saved };
    const results = [];
    for (const call of response.toolCalls) {
      const def = agent.tools[call.toolName]! as ToolDefinition & CacheableTool;
      const args: unknown = def.input.parse(call.input);
      const tc = await tools.lookup({ tenantId, toolName: call.toolName, tool: def, args });
      let value: unknown;
      if (tc.hit) value = tc.hit.value;
      else {
        value = await def.run(args, {} as never);
        await tc.store(value);
      }
      results.push({
        toolCallId: call.toolCallId,
        toolName: call.toolName,
        outcome: { ok: true as const, value },
      });
    }
    convo.push(toolMessage(results));
  }
  throw new Error("conversation did not finish");
}

async function scriptedServer(): Promise<OpenAiTestServer> {
  const server = await startOpenAiTestServer({
    handler: (body) => {
      const last = body.messages?.[body.messages.length - 1];
      if (last?.role === "tool")
        return { text: "Order 7 has shipped.", usage: { prompt_tokens: 60, completion_tokens: 6 } };
      return {
        toolCalls: [{ name: "lookup", arguments: { id: 7 } }],
        usage: { prompt_tokens: 40, completion_tokens: 8 },
      };
    },
  });
  opened.push(server);
  return server;
}

describe.each(backends)("caches on %s", (_name, make) => {
  it("the same deterministic conversation twice: the second makes zero model calls; new instructions call again", async () => {
    const coord = open(make);
    const server = await scriptedServer();
    const model = resolveModel("compatible:det", { compatible: { baseURL: server.url } }) as LanguageModel;
    const calls = { n: 0 };
    const lookup = lookupTool(calls);
    const events: CacheEvent[] = [];
    const tenant = `tenant-${Math.random()}`;

    const first = await runConversation(coord, cachedAgent("Be brief.", { lookup }, model), tenant, events);
    expect(first.text).toBe("Order 7 has shipped.");
    expect(server.requests).toHaveLength(2);
    expect(calls.n).toBe(1);

    events.length = 0;
    const second = await runConversation(coord, cachedAgent("Be brief.", { lookup }, model), tenant, events);
    expect(second).toEqual({ text: "Order 7 has shipped.", saved: 48 + 66 });
    expect(server.requests).toHaveLength(2);
    expect(calls.n).toBe(1);
    expect(events).toEqual([
      { kind: "llm", outcome: "hit", tokensSaved: 48 },
      { kind: "tool", outcome: "hit" },
      { kind: "llm", outcome: "hit", tokensSaved: 66 },
    ]);

    // New instructions: a new agent version, so every LLM step misses (the pure tool still hits).
    await runConversation(coord, cachedAgent("Be very brief.", { lookup }, model), tenant, events);
    expect(server.requests).toHaveLength(4);
    expect(calls.n).toBe(1);

    // Another tenant never sees this tenant's entries.
    await runConversation(coord, cachedAgent("Be brief.", { lookup }, model), `${tenant}-b`, events);
    expect(server.requests).toHaveLength(6);
    expect(calls.n).toBe(2);
  });

  it("a pure tool invalidated by tag is re-executed; other tags and tenants are unaffected", async () => {
    const coord = open(make);
    const calls = { n: 0 };
    const def = lookupTool(calls);
    const cache = createToolCache({ cache: coord.cache, logger: silentLogger() });
    const run = async (tenantId: string, id: number): Promise<boolean> => {
      const l = await cache.lookup({ tenantId, toolName: "lookup", tool: def, args: { id } });
      expect(l.enabled).toBe(true);
      if (l.hit) return true;
      await l.store(await def.run({ id }, {} as never));
      return false;
    };
    expect(await run("t1", 1)).toBe(false);
    expect(await run("t1", 2)).toBe(false);
    expect(await run("t2", 1)).toBe(false);
    expect([await run("t1", 1), await run("t1", 2), await run("t2", 1)]).toEqual([true, true, true]);
    expect(calls.n).toBe(3);

    expect(await cache.invalidate("t1", "order:1")).toEqual(["order:1"]);
    expect([await run("t1", 1), await run("t1", 2), await run("t2", 1)]).toEqual([false, true, true]);
    expect(calls.n).toBe(4);

    // A shared tag invalidates every entry carrying it (for that tenant only).
    await cache.invalidate("t1", ["orders"]);
    expect([await run("t1", 1), await run("t1", 2), await run("t2", 1)]).toEqual([false, false, true]);
    expect(calls.n).toBe(6);
    await expect(cache.invalidate("t1", [""])).rejects.toSatisfy((e) =>
      isCapstanError(e, "validation_failed"),
    );
  });

  it("never serves a non-pure tool from the cache, even with a cache config", async () => {
    const coord = open(make);
    const cache = createToolCache({ cache: coord.cache, logger: silentLogger() });
    const refund: CacheableTool = {
      description: "Refund",
      input: z.object({ id: z.number() }),
      effect: "side-effect",
      cache: { ttlMs: 60_000 },
    };
    const l = await cache.lookup({ tenantId: "t", toolName: "refund", tool: refund, args: { id: 1 } });
    expect(l).toMatchObject({ enabled: false, hit: null });
    await l.store({ refunded: true });
    expect(
      (await cache.lookup({ tenantId: "t", toolName: "refund", tool: refund, args: { id: 1 } })).hit,
    ).toBeNull();
  });
});

describe("LLM cache keys", () => {
  const agent = (over: Partial<CacheableAgent> = {}): CacheableAgent => ({
    ...defineAgent({ name: "a", model: "openai:gpt-4o-mini", instructions: "Be brief.", temperature: 0 }),
    cache: { llm: { ttlMs: 60_000 } },
    ...over,
  });
  const messages = [{ role: "user", content: "hi" }];

  it("depend on tenant, model, instructions (agent version), tools, parameters and messages", () => {
    const k = llmCacheKey({ tenantId: "t", agent: agent(), messages });
    expect(llmCacheKey({ tenantId: "t", agent: agent(), messages: [{ content: "hi", role: "user" }] })).toBe(
      k,
    );
    const variants: CacheableAgent[] = [
      agent({ instructions: "Be terse." }),
      agent({ model: "openai:gpt-4o" }),
      agent({ maxOutputTokens: 100 }),
      agent({
        tools: {
          x: tool({ description: "x", input: z.object({}), effect: "pure", run: () => null }),
        },
      }),
    ];
    for (const v of variants) expect(llmCacheKey({ tenantId: "t", agent: v, messages })).not.toBe(k);
    expect(agentVersion(variants[0]!)).not.toBe(agentVersion(agent()));
    expect(llmCacheKey({ tenantId: "u", agent: agent(), messages })).not.toBe(k);
    expect(
      llmCacheKey({ tenantId: "t", agent: agent(), messages: [{ role: "user", content: "hi!" }] }),
    ).not.toBe(k);
  });

  it("is off unless the agent opts in with temperature 0; stores only complete responses", async () => {
    const coord = open(backends[1]![1]);
    const cache = createLlmCache({ cache: coord.cache, logger: silentLogger() });
    const result = {
      response: { text: "hello", toolCalls: [], finishReason: "stop" },
      usage: { inputTokens: 3, outputTokens: 2 },
    };
    expect(
      (await cache.lookup({ tenantId: "t", agent: agent({ cache: undefined }), messages })).enabled,
    ).toBe(false);
    expect(
      (await cache.lookup({ tenantId: "t", agent: agent({ temperature: 0.5 }), messages })).enabled,
    ).toBe(false);

    const truncated = await cache.lookup({ tenantId: "t", agent: agent(), messages });
    await truncated.store({ ...result, response: { ...result.response, finishReason: "length" } });
    expect((await cache.lookup({ tenantId: "t", agent: agent(), messages })).hit).toBeNull();

    await (await cache.lookup({ tenantId: "t", agent: agent(), messages })).store(result);
    const hit = await cache.lookup({ tenantId: "t", agent: agent(), messages });
    expect(hit.hit).toEqual(result);
    expect(hit.tokensSaved).toBe(5);
  });

  it("a cache that cannot be reached is a miss, never an error", async () => {
    const dead = open(() =>
      createRedisCoordination({
        url: "redis://127.0.0.1:1",
        keyPrefix: prefix,
        logger: silentLogger(),
        events: EVENTS,
      }),
    );
    const events: CacheEvent[] = [];
    const cache = createLlmCache({
      cache: dead.cache,
      logger: silentLogger(),
      hooks: { onCache: (e) => events.push(e) },
    });
    const l = await cache.lookup({ tenantId: "t", agent: agent(), messages });
    expect(l).toMatchObject({ enabled: true, hit: null });
    await l.store({
      response: { text: "x", toolCalls: [], finishReason: "stop" },
      usage: { inputTokens: 1, outputTokens: 1 },
    });
    expect(events.map((e) => e.outcome)).toEqual(["error", "miss", "error"]);
    const tools = createToolCache({ cache: dead.cache, logger: silentLogger() });
    const t = await tools.lookup({
      tenantId: "t",
      toolName: "lookup",
      tool: lookupTool({ n: 0 }),
      args: { id: 1 },
    });
    expect(t.enabled).toBe(false);
    await expect(tools.invalidate("t", "orders")).rejects.toSatisfy((e) =>
      isCapstanError(e, "redis_unavailable"),
    );
  });
});
