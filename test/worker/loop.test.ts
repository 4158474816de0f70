import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { z } from "zod";
import { APICallError } from "@ai-sdk/provider";
import { createTestDb, until, type TestDb } from "../support/pg.js";
import { startOpenAiTestServer } from "../support/openai-server.js";
import { defineAgent, tool } from "../../src/agent/define.js";
import { resolveModel, toolSchemas } from "../../src/agent/models.js";
import { createScriptedModel, type Script } from "../../src/agent/scripted.js";
import type { AgentDefinition } from "../../src/agent/types.js";
import { resolveSettings } from "../../src/config/config.js";
import { createMemoryCoordination } from "../../src/coord/index.js";
import type { Coordination, StreamEvent } from "../../src/coord/types.js";
import { silentLogger } from "../../src/logger.js";
import { readJournal } from "../../src/state/journal.js";
import { cancelRun, enqueueRun, getRun, resumeRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread, readHistory } from "../../src/state/threads.js";
import type { Run } from "../../src/state/types.js";
import type { LoadedAgent } from "../../src/worker/run-loop.js";
import { createWorker, type Worker } from "../../src/worker/worker.js";
import type { RunServices } from "../../src/worker/services.js";
import { localLexicalEmbedder, type Embedder } from "../../src/agent/embeddings.js";
import { putMemory } from "../../src/state/memories.js";

/** The reasoning loop in-process against real PostgreSQL: model paths, approvals, limits, errors. */

let t: TestDb;
let tenantId: string;
let coord: Coordination;
let worker: Worker | undefined;

beforeAll(async () => {
  t = await createTestDb();
  tenantId = (await ensureTenant(t.db, "loop")).id;
  coord = createMemoryCoordination({ events: { maxLen: 10_000, ttlMs: 3_600_000 } });
});
afterEach(async () => {
  await worker?.stop({ graceMs: 1000 });
  worker = undefined;
});
afterAll(async () => {
  await coord?.close();
  await t?.drop();
});

const settings = resolveSettings({ flags: { worker: { leaseMs: 5000, pollMs: 100, concurrency: 4 } } });

async function startWorker(
  agents: AgentDefinition[],
  retry = { maxRetries: 3, baseDelayMs: 10, maxDelayMs: 50 },
  services: RunServices = {},
) {
  const loaded = new Map<string, LoadedAgent>(
    agents.map((def) => [def.name, { def, model: resolveModel(def.model, {}), tools: toolSchemas(def) }]),
  );
  worker = createWorker({
    db: t.db,
    coord,
    agents: loaded,
    settings,
    logger: silentLogger(),
    retry,
    services,
  });
  await worker.start();
}

async function run(agent: string, text: string): Promise<Run> {
  const th = await createThread(t.db, tenantId);
  return (
    await enqueueRun(t.db, {
      tenantId,
      threadId: th.id,
      agent,
      content: text,
      maxAttempts: 3,
      defaultMaxPending: 1000,
    })
  ).run;
}

const settled = (id: string) =>
  until(
    async () => {
      const r = await getRun(t.db, tenantId, id);
      return ["succeeded", "failed", "waiting", "cancelled"].includes(r.status) ? r : null;
    },
    { what: `run ${id} to settle` },
  );

async function streamOf(runId: string): Promise<StreamEvent[]> {
  return coord.events.read(runId, "0", { count: 1000 });
}

describe("reasoning loop", () => {
  it("talks to an OpenAI-compatible server over HTTP: streamed text, tool calls, one 429 with Retry-After", async () => {
    const calls: string[] = [];
    const server = await startOpenAiTestServer({
      handler: (body, i) => {
        calls.push(String(i));
        if (i === 0) return { status: 429, retryAfterSeconds: 1 };
        const last = body.messages?.at(-1);
        if (last?.role === "tool")
          return {
            text: `The weather is ${String(last.content)}.`,
            usage: { prompt_tokens: 30, completion_tokens: 8 },
          };
        return {
          toolCalls: [{ name: "weather", arguments: { city: "Oslo" } }],
          usage: { prompt_tokens: 20, completion_tokens: 5 },
        };
      },
    });
    try {
      const weather = tool({
        description: "Current weather",
        input: z.object({ city: z.string() }),
        effect: "pure",
        run: ({ city }) => ({ city, sky: "clear" }),
      });
      const model = resolveModel("compatible:test-model", { compatible: { baseURL: server.url } });
      await startWorker([defineAgent({ name: "wx", model, instructions: "Be brief.", tools: { weather } })]);
      const r = await run("wx", "Weather in Oslo?");
      const done = await settled(r.id);
      expect(done.status, JSON.stringify(done.error)).toBe("succeeded");
      expect(calls.length).toBe(3); // 429, tool call, final answer
      expect(done.usage).toEqual({ inputTokens: 50, outputTokens: 13, cachedInputTokens: 0 });
      // The tool schema reached the server in the wire format.
      expect(server.requests[1]?.tools?.[0]?.function.name).toBe("weather");
      const history = await readHistory(t.db, r.threadId);
      expect(history.map((m) => m.role)).toEqual(["user", "assistant", "tool", "assistant"]);
      expect(JSON.stringify(history.at(-1)?.content)).toContain("clear");
      const events = await streamOf(r.id);
      const reset = events.find((e) => e.type === "message.reset");
      expect(reset?.data).toMatchObject({ delayMs: 1000, status: 429 }); // Retry-After honoured exactly
      expect(
        events
          .filter((e) => e.type === "message.delta")
          .map((e) => e.data.text)
          .join(""),
      ).toContain("The weather is");
    } finally {
      await server.close();
    }
  });

  it("recalls the memories nearest the input into the system prompt, once per run", async () => {
    const base = localLexicalEmbedder(64);
    let embedCalls = 0;
    const embedder: Embedder = {
      ...base,
      embed: (texts, signal) => {
        embedCalls++;
        return base.embed(texts, signal);
      },
    };
    const seed = async (text: string) =>
      putMemory(t.db, tenantId, {
        namespace: "prefs",
        text,
        embedding: (await base.embed([text]))[0]!,
        embeddingModel: base.id,
      });
    await seed("the user drinks green tea without sugar");
    await seed("the user's bicycle is red");
    const systems: string[] = [];
    const ping = tool({ description: "ping", input: z.object({}), effect: "pure", run: () => "pong" });
    const script: Script = ({ messages }) => {
      const sys = messages.find((m) => m.role === "system");
      systems.push(typeof sys?.content === "string" ? sys.content : "");
      return messages.at(-1)?.role === "tool"
        ? { text: "done" }
        : { toolCalls: [{ toolName: "ping", input: {} }] };
    };
    await startWorker(
      [
        defineAgent({
          name: "recaller",
          model: createScriptedModel(script),
          instructions: "Be brief.",
          tools: { ping },
          memory: { recall: { k: 1, namespace: { name: "prefs" } } },
        }),
      ],
      undefined,
      { memory: { embedder } },
    );
    const r = await run("recaller", "what tea do I drink?");
    expect((await settled(r.id)).status).toBe("succeeded");
    expect(systems).toHaveLength(2); // two LLM steps
    for (const sys of systems) {
      expect(sys).toContain("Be brief.");
      expect(sys).toContain("- the user drinks green tea without sugar");
      expect(sys).not.toContain("bicycle");
    }
    expect(embedCalls).toBe(1); // recalled once for the run, not per step
  });

  it("pauses a requiresApproval tool until approved, and feeds a rejection back to the model", async () => {
    let executed = 0;
    const tokens: number[] = [];
    const refund = tool({
      description: "Refund",
      input: z.object({ amount: z.number() }),
      effect: "idempotent",
      requiresApproval: true,
      run: ({ amount }, ctx) => {
        executed++;
        tokens.push(ctx.fencingToken);
        return { refunded: amount };
      },
    });
    const script: Script = ({ messages }) => {
      const last = messages.at(-1);
      if (last?.role === "tool") return { text: "done: " + JSON.stringify(last.content) };
      return { toolCalls: [{ toolName: "refund", input: { amount: 5 } }] };
    };
    await startWorker([
      defineAgent({
        name: "approver",
        model: createScriptedModel(script),
        instructions: "",
        tools: { refund },
      }),
    ]);
    const a = await run("approver", "refund me");
    const waiting = await settled(a.id);
    expect(waiting.status).toBe("waiting");
    expect(waiting.wait).toMatchObject({
      reason: "approval",
      tool: "refund",
      args: { amount: 5 },
      step_no: 1,
    });
    expect(executed).toBe(0);
    await resumeRun(t.db, tenantId, a.id, { decision: "approve" });
    const ok = await settled(a.id);
    expect(ok.status).toBe("succeeded");
    expect(executed).toBe(1);
    // The fencing token is the epoch of the claim that ran the tool: the second (after the approval).
    expect(tokens).toEqual([ok.leaseEpoch]);
    expect(ok.leaseEpoch).toBeGreaterThanOrEqual(2);

    const b = await run("approver", "refund me too");
    await settled(b.id);
    await resumeRun(t.db, tenantId, b.id, { decision: "reject", input: "not eligible" });
    const rejected = await settled(b.id);
    expect(rejected.status).toBe("succeeded");
    expect(executed).toBe(1);
    const j = await readJournal(t.db, b.id);
    expect(j[1]).toMatchObject({ status: "failed", error: { code: "rejected" } });
    expect(JSON.stringify(j[2]?.output)).toContain("not eligible");
  });

  it("returns invalid tool arguments and tool errors to the model instead of crashing", async () => {
    const div = tool({
      description: "Divide",
      input: z.object({ a: z.number(), b: z.number() }),
      effect: "pure",
      run: ({ a, b }) => {
        if (b === 0) throw new Error("division by zero");
        return a / b;
      },
    });
    const script: Script = ({ messages, step }) => {
      if (step === 0) return { toolCalls: [{ toolName: "div", input: { a: "x", b: 1 } }] };
      if (step === 1) return { toolCalls: [{ toolName: "div", input: { a: 1, b: 0 } }] };
      if (step === 2) return { toolCalls: [{ toolName: "nope", input: {} }] };
      return { text: JSON.stringify(messages.at(-1)) };
    };
    await startWorker([
      defineAgent({ name: "div", model: createScriptedModel(script), instructions: "", tools: { div } }),
    ]);
    const r = await run("div", "go");
    const done = await settled(r.id);
    expect(done.status).toBe("succeeded");
    const j = await readJournal(t.db, r.id);
    const tools = j.filter((s) => s.kind === "tool");
    expect(tools.map((s) => s.error?.code)).toEqual(["invalid_arguments", "tool_error", "unknown_tool"]);
    expect(tools[1]?.error?.message).toMatch(/division by zero/);
  });

  it("fails a run that exceeds its step limit and frees the thread", async () => {
    const ping = tool({ description: "ping", input: z.object({}), effect: "pure", run: () => "pong" });
    const loop: Script = () => ({ toolCalls: [{ toolName: "ping", input: {} }] });
    await startWorker([
      defineAgent({
        name: "loopy",
        model: createScriptedModel(loop),
        instructions: "",
        tools: { ping },
        limits: { maxSteps: 5 },
      }),
      defineAgent({ name: "echo", model: "scripted:echo", instructions: "" }),
    ]);
    const r = await run("loopy", "go");
    const done = await settled(r.id);
    expect(done.status).toBe("failed");
    expect(done.error?.code).toBe("max_steps_exceeded");
    const next = (
      await enqueueRun(t.db, {
        tenantId,
        threadId: r.threadId,
        agent: "echo",
        content: "hello",
        maxAttempts: 3,
        defaultMaxPending: 1000,
      })
    ).run;
    expect((await settled(next.id)).status).toBe("succeeded");
  });

  it("fails on a model error that retrying cannot fix, with the reason", async () => {
    const bad: Script = () => {
      throw new APICallError({
        message: "invalid model",
        url: "x",
        requestBodyValues: {},
        statusCode: 400,
        isRetryable: false,
      });
    };
    await startWorker([defineAgent({ name: "bad", model: createScriptedModel(bad), instructions: "" })]);
    const done = await settled((await run("bad", "hi")).id);
    expect(done.status).toBe("failed");
    expect(done.error).toMatchObject({ code: "model_error", status: 400 });
    expect(done.error?.message).toMatch(/invalid model/);
  });

  it("stops local work at once when a running run is cancelled", async () => {
    let aborted = false;
    let started!: () => void;
    const begun = new Promise<void>((r) => (started = r));
    const slow = tool({
      description: "slow",
      input: z.object({}),
      effect: "idempotent",
      run: (_a, ctx) =>
        new Promise((_, reject) => {
          started();
          ctx.signal.addEventListener("abort", () => {
            aborted = true;
            reject(new Error("aborted"));
          });
        }),
    });
    const script: Script = () => ({ toolCalls: [{ toolName: "slow", input: {} }] });
    await startWorker([
      defineAgent({ name: "slow", model: createScriptedModel(script), instructions: "", tools: { slow } }),
    ]);
    const r = await run("slow", "go");
    await begun;
    await cancelRun(t.db, tenantId, r.id);
    await until(() => aborted, { what: "the tool's signal to abort" });
    await until(() => worker!.inFlight() === 0, { what: "the run to leave the worker" });
    expect((await getRun(t.db, tenantId, r.id)).status).toBe("cancelled");
  });

  it("fails a run whose agent is not loaded", async () => {
    await startWorker([]);
    const done = await settled((await run("ghost", "hi")).id);
    expect(done.error?.code).toBe("unknown_agent");
  });
});
