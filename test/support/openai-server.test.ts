import { APICallError } from "@ai-sdk/provider";
import { generateText, jsonSchema, streamText, tool } from "ai";
import { afterEach, describe, expect, it } from "vitest";
import { resolveModel } from "../../src/agent/models.js";
import { startOpenAiTestServer, type OpenAiTestServer } from "./openai-server.js";

let server: OpenAiTestServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

const weather = tool({
  description: "Weather for a city",
  inputSchema: jsonSchema<{ city: string; days: number }>({
    type: "object",
    properties: { city: { type: "string" }, days: { type: "number" } },
    required: ["city", "days"],
    additionalProperties: false,
  }),
});

describe("OpenAI-compatible test server", () => {
  it("streams text to the AI SDK, with usage", async () => {
    server = await startOpenAiTestServer({ handler: () => ({ text: "Hello from the test server" }) });
    const model = resolveModel("compatible:test-model", {
      compatible: { baseURL: server.url, apiKey: "sk-test" },
    });
    const result = streamText({ model, prompt: "hi", maxRetries: 0 });
    const deltas: string[] = [];
    for await (const part of result.fullStream) {
      if (part.type === "text-delta") deltas.push(part.text);
      if (part.type === "error") throw part.error;
    }
    expect(deltas.length).toBeGreaterThan(2);
    expect(deltas.join("")).toBe("Hello from the test server");
    expect(await result.finishReason).toBe("stop");
    const usage = await result.usage;
    expect(usage.outputTokens).toBe(Math.ceil("Hello from the test server".length / 4));
    expect(usage.inputTokens).toBeGreaterThan(0);

    expect(server.requests).toHaveLength(1);
    expect(server.requests[0]).toMatchObject({
      model: "test-model",
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: "user", content: "hi" }],
    });
    expect(server.requestHeaders[0]?.authorization).toBe("Bearer sk-test");
  });

  it("streams tool calls with arguments split across chunks", async () => {
    server = await startOpenAiTestServer({
      handler: () => ({
        toolCalls: [
          { name: "weather", arguments: { city: "Lisbon", days: 3 } },
          { name: "weather", arguments: { city: "Porto", days: 1 } },
        ],
      }),
    });
    const model = resolveModel("compatible:test-model", { compatible: { baseURL: server.url } });
    const result = streamText({ model, prompt: "weather?", tools: { weather }, maxRetries: 0 });
    const inputDeltas: string[] = [];
    for await (const part of result.fullStream) {
      if (part.type === "tool-input-delta") inputDeltas.push(part.delta);
      if (part.type === "error") throw part.error;
    }
    const calls = await result.toolCalls;
    expect(calls.map((c) => [c.toolName, c.input])).toEqual([
      ["weather", { city: "Lisbon", days: 3 }],
      ["weather", { city: "Porto", days: 1 }],
    ]);
    expect(new Set(calls.map((c) => c.toolCallId)).size).toBe(2);
    expect(inputDeltas.length).toBeGreaterThan(2);
    expect(await result.finishReason).toBe("tool-calls");
    // The model saw the tool's name, description and JSON schema.
    expect(server.requests[0]?.tools).toEqual([
      expect.objectContaining({
        type: "function",
        function: expect.objectContaining({
          name: "weather",
          description: "Weather for a city",
          parameters: expect.objectContaining({ required: ["city", "days"] }) as unknown,
        }) as unknown,
      }),
    ]);
  });

  it("answers non-streaming requests", async () => {
    server = await startOpenAiTestServer({
      handler: (_body, i) =>
        i === 0
          ? { text: "plain answer" }
          : { toolCalls: [{ name: "weather", arguments: { city: "Faro", days: 2 } }] },
    });
    const model = resolveModel("compatible:test-model", { compatible: { baseURL: server.url } });
    const a = await generateText({ model, prompt: "x", maxRetries: 0 });
    expect(a.text).toBe("plain answer");
    expect(a.usage.outputTokens).toBeGreaterThan(0);
    const b = await generateText({ model, prompt: "y", tools: { weather }, maxRetries: 0 });
    expect(b.toolCalls.map((c) => c.input)).toEqual([{ city: "Faro", days: 2 }]);
    expect(server.requests.map((r) => r.stream ?? false)).toEqual([false, false]);
  });

  it("surfaces a 429 as an APICallError with status and retry-after", async () => {
    server = await startOpenAiTestServer({ handler: () => ({ status: 429, retryAfterSeconds: 7 }) });
    const model = resolveModel("compatible:test-model", { compatible: { baseURL: server.url } });
    // onError: the error is read from the stream below; the default handler would log it.
    const result = streamText({ model, prompt: "hi", maxRetries: 0, onError: () => {} });
    let error: unknown;
    for await (const part of result.fullStream) {
      if (part.type === "error") error = part.error;
    }
    expect(APICallError.isInstance(error)).toBe(true);
    const e = error as APICallError;
    expect(e.statusCode).toBe(429);
    expect(e.isRetryable).toBe(true);
    expect(e.responseHeaders?.["retry-after"]).toBe("7");
    expect(server.requests).toHaveLength(1);
  });

  it("surfaces a 500 as a retryable APICallError; the handler decides per request", async () => {
    server = await startOpenAiTestServer({
      handler: (_b, i) => (i === 0 ? { status: 500 } : { text: "recovered" }),
    });
    const model = resolveModel("compatible:test-model", { compatible: { baseURL: server.url } });
    await expect(generateText({ model, prompt: "x", maxRetries: 0 })).rejects.toSatisfy(
      (e) => APICallError.isInstance(e) && e.statusCode === 500 && e.isRetryable,
    );
    const ok = await generateText({ model, prompt: "x", maxRetries: 0 });
    expect(ok.text).toBe("recovered");
  });
});
