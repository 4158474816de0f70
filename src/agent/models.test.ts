import { describe, expect, it } from "vitest";
import { isCapstanError } from "../errors.js";
import { defineAgent } from "./define.js";
import { parseModelSpec, registerScript, resolveModel, toolSchemas } from "./models.js";
import { createScriptedModel } from "./scripted.js";
import type { ModelProviderSettings } from "./types.js";

function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (err) {
    expect(isCapstanError(err, "config_invalid")).toBe(true);
    return err as Error;
  }
  throw new Error("expected config_invalid");
}

describe("resolveModel()", () => {
  it("builds provider models without network", () => {
    const o = resolveModel("openai:gpt-4o-mini", { openai: { apiKey: "k" } });
    expect(o).toMatchObject({ specificationVersion: "v3", modelId: "gpt-4o-mini" });
    expect(o.provider).toMatch(/^openai/);
    const a = resolveModel("anthropic:claude-sonnet-4-5", { anthropic: { apiKey: "k" } });
    expect(a.provider).toMatch(/^anthropic/);
    const c = resolveModel("compatible:llama3.1", {
      compatible: { baseURL: "http://127.0.0.1:1/v1", name: "ollama" },
    });
    expect(c).toMatchObject({ modelId: "llama3.1" });
    expect(c.provider).toMatch(/^ollama/);
    // Model ids may contain colons (Ollama tags).
    expect(resolveModel("compatible:llama3.1:8b", { compatible: { baseURL: "http://x/v1" } }).modelId).toBe(
      "llama3.1:8b",
    );
  });

  it("requires a base URL for compatible models", () => {
    expect(errorOf(() => resolveModel("compatible:llama3.1", {})).message).toMatch(
      /models\.compatible\.baseURL/,
    );
  });

  it("resolves provider models lazily, reporting what the SDK's own model reports", async () => {
    const { createOpenAI } = await import("@ai-sdk/openai");
    const { createAnthropic } = await import("@ai-sdk/anthropic");
    const { createOpenAICompatible } = await import("@ai-sdk/openai-compatible");
    const pairs = [
      [
        resolveModel("openai:gpt-4o-mini", { openai: { apiKey: "k" } }),
        createOpenAI({ apiKey: "k" })("gpt-4o-mini"),
      ],
      [
        resolveModel("anthropic:claude-sonnet-4-5", { anthropic: { apiKey: "k" } }),
        createAnthropic({ apiKey: "k" })("claude-sonnet-4-5"),
      ],
      [
        resolveModel("compatible:llama3.1", {
          compatible: { baseURL: "http://127.0.0.1:1/v1", name: "ollama" },
        }),
        createOpenAICompatible({ name: "ollama", baseURL: "http://127.0.0.1:1/v1" }).chatModel("llama3.1"),
      ],
    ] as const;
    for (const [lazy, real] of pairs) {
      expect(lazy.specificationVersion).toBe(real.specificationVersion);
      expect(lazy.provider).toBe(real.provider);
      expect(lazy.modelId).toBe(real.modelId);
      expect(await lazy.supportedUrls).toEqual(await real.supportedUrls);
    }
  });

  it("lists the valid providers for an unknown one", () => {
    const e = errorOf(() => resolveModel("mistral:large", {}));
    expect(e.message).toContain('"openai", "anthropic", "compatible", "scripted"');
    expect(parseModelSpec("scripted:echo")).toEqual({ provider: "scripted", modelId: "echo" });
  });

  it("passes instances through and refuses non-models", () => {
    const m = createScriptedModel(() => ({ text: "x" }));
    expect(resolveModel(m)).toBe(m);
    errorOf(() => resolveModel({ foo: 1 } as never));
  });

  it("resolves built-in and registered scripts; registries are per settings object", async () => {
    expect(resolveModel("scripted:echo")).toMatchObject({ provider: "scripted", modelId: "echo" });
    const e = errorOf(() => resolveModel("scripted:nope", {}));
    expect(e.message).toMatch(/known scripts: "echo", "tools"/);

    const s1: ModelProviderSettings = {};
    const s2: ModelProviderSettings = {};
    expect(registerScript(s1, "fixed", () => ({ text: "fixed answer" }))).toBe(s1);
    const m = resolveModel("scripted:fixed", s1);
    const r = await m.doGenerate({ prompt: [{ role: "user", content: [{ type: "text", text: "q" }] }] });
    expect(r.content).toEqual([{ type: "text", text: "fixed answer" }]);
    errorOf(() => resolveModel("scripted:fixed", s2));

    expect(errorOf(() => registerScript(s1, "fixed", () => ({ text: "again" }))).message).toMatch(/already/);
    errorOf(() => registerScript(s1, "bad name", () => ({ text: "" })));
    // Registered scripts shadow built-ins.
    registerScript(s2, "echo", () => ({ text: "custom echo" }));
    const r2 = await resolveModel("scripted:echo", s2).doGenerate({ prompt: [] });
    expect(r2.content).toEqual([{ type: "text", text: "custom echo" }]);
  });
});

describe("toolSchemas()", () => {
  it("has no execute functions", async () => {
    const { tool } = await import("./define.js");
    const { z } = await import("zod");
    const agent = defineAgent({
      name: "a",
      model: "scripted:echo",
      instructions: "",
      tools: {
        t: tool({ description: "T", input: z.object({ q: z.string() }), effect: "pure", run: () => 1 }),
      },
    });
    const tools = toolSchemas(agent);
    expect(Object.keys(tools)).toEqual(["t"]);
    expect(tools.t?.description).toBe("T");
    expect(tools.t?.execute).toBeUndefined();
  });
});
