import type { LanguageModelV3CallOptions, LanguageModelV3StreamPart } from "@ai-sdk/provider";
import { APICallError } from "@ai-sdk/provider";
import { generateText, streamText, type ModelMessage } from "ai";
import { describe, expect, it } from "vitest";
import { z } from "zod";
import { defineAgent, tool } from "./define.js";
import { resolveModel, toolSchemas } from "./models.js";
import { builtinScripts, createScriptedModel, type ScriptCallInfo } from "./scripted.js";

const echo = builtinScripts.echo!;

function callOptions(text: string): LanguageModelV3CallOptions {
  return {
    prompt: [
      { role: "system", content: "Be nice." },
      { role: "user", content: [{ type: "text", text }] },
    ],
  };
}

async function collect(
  stream: ReadableStream<LanguageModelV3StreamPart>,
): Promise<LanguageModelV3StreamPart[]> {
  const parts: LanguageModelV3StreamPart[] = [];
  const reader = stream.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return parts;
    parts.push(value);
  }
}

const agent = defineAgent({
  name: "shop",
  model: "scripted:tools",
  instructions: "Help with orders.",
  tools: {
    lookup_order: tool({
      description: "Look up an order",
      input: z.object({ orderId: z.string() }),
      effect: "pure",
      run: ({ orderId }) => ({ orderId, status: "shipped" }),
    }),
    refund: tool({
      description: "Refund an order",
      input: z.object({ orderId: z.string(), amount: z.number().positive() }),
      effect: "idempotent",
      run: () => ({ ok: true }),
    }),
  },
});

describe("scripted model", () => {
  it("is deterministic: same prompt, same answer, id and usage", async () => {
    const model = createScriptedModel(echo);
    const a = await model.doGenerate(callOptions("hello there"));
    const b = await model.doGenerate(callOptions("hello there"));
    expect(a).toEqual(b);
    expect(a.content).toEqual([{ type: "text", text: "You said: hello there" }]);
    expect(a.usage.inputTokens.total).toBeGreaterThan(0);
    expect(a.usage.outputTokens.total).toBe(Math.ceil("You said: hello there".length / 4));
    expect(a.finishReason.unified).toBe("stop");

    const s1 = await collect((await model.doStream(callOptions("hello there"))).stream);
    const s2 = await collect((await model.doStream(callOptions("hello there"))).stream);
    expect(s1).toEqual(s2);
    const finish = s1.at(-1);
    expect(finish).toMatchObject({ type: "finish", usage: a.usage });

    const c = await model.doGenerate(callOptions("something longer than before"));
    expect(c.usage.inputTokens.total).toBeGreaterThan(a.usage.inputTokens.total!);
  });

  it("streams text in several deltas through streamText", async () => {
    const result = streamText({
      model: resolveModel("scripted:echo"),
      prompt: "one two three",
      maxRetries: 0,
    });
    const deltas: string[] = [];
    for await (const part of result.fullStream) {
      if (part.type === "text-delta") deltas.push(part.text);
    }
    expect(deltas.length).toBeGreaterThan(2);
    expect(deltas.join("")).toBe("You said: one two three");
    expect(await result.text).toBe("You said: one two three");
    const usage = await result.usage;
    expect(usage.outputTokens).toBe(Math.ceil("You said: one two three".length / 4));
    expect(usage.inputTokens).toBeGreaterThan(0);
    expect(await result.finishReason).toBe("stop");
  });

  it("scripted:tools calls the named tool with JSON args, then summarises the results", async () => {
    const model = resolveModel("scripted:tools");
    const tools = toolSchemas(agent);
    const first = streamText({
      model,
      system: agent.instructions,
      prompt: 'please refund {"orderId": "o-7", "amount": 12.5}',
      tools,
      maxRetries: 0,
    });
    const calls = await first.toolCalls;
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ toolName: "refund", input: { orderId: "o-7", amount: 12.5 } });
    expect(await first.finishReason).toBe("tool-calls");
    const call = calls[0]!;

    const messages: ModelMessage[] = [
      { role: "user", content: 'please refund {"orderId": "o-7", "amount": 12.5}' },
      {
        role: "assistant",
        content: [{ type: "tool-call", toolCallId: call.toolCallId, toolName: "refund", input: call.input }],
      },
      {
        role: "tool",
        content: [
          {
            type: "tool-result",
            toolCallId: call.toolCallId,
            toolName: "refund",
            output: { type: "json", value: { ok: true } },
          },
        ],
      },
    ];
    const second = await generateText({ model, messages, tools, maxRetries: 0 });
    expect(second.text).toBe('Tool results: refund: {"ok":true}');
  });

  it("scripted:tools without a named tool behaves like echo; invalid JSON gives {}", async () => {
    const model = resolveModel("scripted:tools");
    const tools = toolSchemas(agent);
    const plain = await generateText({ model, prompt: "hi", tools, maxRetries: 0 });
    expect(plain.text).toBe("You said: hi");
    // "lookup_order" is matched as a whole word only ("lookup_orders" would not match).
    const noArgs = await generateText({ model, prompt: "lookup_order {not json}", tools, maxRetries: 0 });
    expect(noArgs.toolCalls[0]?.toolName).toBe("lookup_order");
    expect(noArgs.toolCalls[0]?.input).toEqual({});
    const near = await generateText({ model, prompt: "lookup_orders please", tools, maxRetries: 0 });
    expect(near.toolCalls).toHaveLength(0);
  });

  it("gives the script the prompt, the tools (with JSON schemas) and the step", async () => {
    const seen: ScriptCallInfo[] = [];
    const model = createScriptedModel((info) => {
      seen.push(info);
      return { text: "ok" };
    });
    await generateText({ model, prompt: "x", tools: toolSchemas(agent), maxRetries: 0 });
    const info = seen[0]!;
    expect(info.step).toBe(0);
    expect(info.tools.map((t) => t.name)).toEqual(["lookup_order", "refund"]);
    expect(info.tools[1]).toMatchObject({
      description: "Refund an order",
      inputSchema: {
        type: "object",
        properties: { orderId: { type: "string" }, amount: { type: "number", exclusiveMinimum: 0 } },
        required: ["orderId", "amount"],
      },
    });

    await model.doGenerate({
      prompt: [
        { role: "user", content: [{ type: "text", text: "a" }] },
        { role: "assistant", content: [{ type: "text", text: "b" }] },
        { role: "tool", content: [] },
        { role: "assistant", content: [{ type: "text", text: "c" }] },
      ],
    });
    expect(seen[1]?.step).toBe(2);
  });

  it("emits several tool calls with distinct, deterministic ids", async () => {
    const model = createScriptedModel(() => ({
      toolCalls: [
        { toolName: "lookup_order", input: { orderId: "a" } },
        { toolName: "lookup_order", input: { orderId: "b" } },
      ],
    }));
    const r1 = await generateText({ model, prompt: "x", tools: toolSchemas(agent), maxRetries: 0 });
    const r2 = await generateText({ model, prompt: "x", tools: toolSchemas(agent), maxRetries: 0 });
    expect(r1.toolCalls.map((c): unknown => c.input)).toEqual([{ orderId: "a" }, { orderId: "b" }]);
    expect(new Set(r1.toolCalls.map((c) => c.toolCallId)).size).toBe(2);
    expect(r2.toolCalls.map((c) => c.toolCallId)).toEqual(r1.toolCalls.map((c) => c.toolCallId));
  });

  it("honours abortSignal during the per-call delay", async () => {
    // A delay longer than the test may run: only the abort can end the call.
    const model = createScriptedModel(echo, { delayMs: 600_000 });
    const ac = new AbortController();
    const call = model.doStream({ ...callOptions("x"), abortSignal: ac.signal });
    ac.abort(new Error("cancelled by test")); // the call is already waiting out its delay
    await expect(call).rejects.toThrow("cancelled by test");
  });

  it("honours abortSignal between streamed deltas", async () => {
    const model = createScriptedModel(echo, { chunkDelayMs: 30 });
    const ac = new AbortController();
    const { stream } = await model.doStream({ ...callOptions("a b c d e f g h"), abortSignal: ac.signal });
    const reader = stream.getReader();
    const got: LanguageModelV3StreamPart[] = [];
    let failure: unknown;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        got.push(value);
        if (value.type === "text-delta") ac.abort(new Error("stop"));
      }
    } catch (err) {
      failure = err;
    }
    expect(failure).toBeInstanceOf(Error);
    expect(got.filter((p) => p.type === "text-delta")).toHaveLength(1);
  });

  it("lets a script throw provider errors (e.g. a 429)", async () => {
    const model = createScriptedModel(() => {
      throw new APICallError({
        message: "rate limited",
        url: "scripted://",
        requestBodyValues: {},
        statusCode: 429,
        responseHeaders: { "retry-after": "1" },
      });
    });
    await expect(generateText({ model, prompt: "x", maxRetries: 0 })).rejects.toSatisfy(
      (e) => APICallError.isInstance(e) && e.statusCode === 429,
    );
  });
});
