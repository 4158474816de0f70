import { describe, expect, expectTypeOf, it } from "vitest";
import { z } from "zod";
import { isCapstanError } from "../errors.js";
import { agentVersion, defineAgent, defineConfig, tool, type AgentOptions } from "./define.js";
import { createScriptedModel } from "./scripted.js";
import type { AgentDefinition, ToolContext } from "./types.js";

const lookup = tool({
  description: "Look up an order",
  input: z.object({ orderId: z.string(), verbose: z.boolean().optional() }),
  effect: "pure",
  run: ({ orderId }) => ({ orderId, status: "shipped" }),
});

function configError(fn: () => unknown): { message: string; fields: unknown } {
  try {
    fn();
  } catch (err) {
    expect(isCapstanError(err, "config_invalid")).toBe(true);
    const e = err as Error & { fields?: unknown };
    return { message: e.message, fields: e.fields };
  }
  throw new Error("expected a config_invalid error");
}

describe("tool()", () => {
  it("fills defaults and keeps the zod input type for run's args", async () => {
    expect(lookup.requiresApproval).toBe(false);
    expect(lookup.timeoutMs).toBe(60_000);
    expect(lookup.effect).toBe("pure");
    type Run = typeof lookup.run;
    expectTypeOf<Parameters<Run>[0]>().toEqualTypeOf<{ orderId: string; verbose?: boolean | undefined }>();
    expectTypeOf<ReturnType<Run>>().toEqualTypeOf<
      { orderId: string; status: string } | Promise<{ orderId: string; status: string }>
    >();
    const out = await lookup.run({ orderId: "o1" }, {} as ToolContext);
    expect(out).toEqual({ orderId: "o1", status: "shipped" });
  });

  it("keeps explicit options", () => {
    const t = tool({
      description: "Send an email",
      input: z.object({ to: z.string() }).strict(),
      effect: "side-effect",
      requiresApproval: true,
      timeoutMs: 5_000,
      run: async () => "sent",
    });
    expect(t.requiresApproval).toBe(true);
    expect(t.timeoutMs).toBe(5_000);
  });

  it("refuses a bad effect, a non-object input, an empty description, a bad timeout", () => {
    const base = { description: "d", input: z.object({}), effect: "pure" as const, run: () => 1 };
    expect(configError(() => tool({ ...base, effect: "dangerous" as "pure" })).message).toMatch(
      /effect: must be one of "pure", "idempotent", "side-effect" \(got "dangerous"\)/,
    );
    expect(configError(() => tool({ ...base, input: z.string() as unknown as z.ZodObject })).message).toMatch(
      /input: must be a zod object schema/,
    );
    expect(configError(() => tool({ ...base, input: {} as unknown as z.ZodObject })).message).toMatch(
      /input: must be a zod object schema/,
    );
    expect(configError(() => tool({ ...base, description: " " })).message).toMatch(/description/);
    expect(configError(() => tool({ ...base, timeoutMs: 0 })).message).toMatch(
      /timeoutMs: must be a positive integer/,
    );
    expect(configError(() => tool({ ...base, timeoutMs: 1.5 })).message).toMatch(/timeoutMs/);
  });
});

describe("defineAgent()", () => {
  it("returns a plain object with default limits", () => {
    const a = defineAgent({
      name: "support",
      model: "openai:gpt-4o-mini",
      instructions: "Help.",
      tools: { lookup },
    });
    expect(a).toEqual({
      name: "support",
      model: "openai:gpt-4o-mini",
      instructions: "Help.",
      tools: {
        lookup: expect.objectContaining({ description: "Look up an order", effect: "pure" }) as unknown,
      },
      limits: { maxSteps: 25, maxTokens: 200_000, wallTimeMs: 600_000 },
    });
    expectTypeOf(a).toEqualTypeOf<AgentDefinition>();
  });

  it("merges partial limits with the defaults and keeps model settings", () => {
    const a = defineAgent({
      name: "a1",
      model: "scripted:echo",
      instructions: "",
      limits: { maxSteps: 3 },
      temperature: 0,
      maxOutputTokens: 100,
    });
    expect(a.limits).toEqual({ maxSteps: 3, maxTokens: 200_000, wallTimeMs: 600_000 });
    expect(a.tools).toEqual({});
    expect(a.temperature).toBe(0);
    expect(a.maxOutputTokens).toBe(100);
  });

  it("accepts an AI SDK model instance", () => {
    const model = createScriptedModel(() => ({ text: "x" }));
    expect(defineAgent({ name: "inst", model, instructions: "" }).model).toBe(model);
  });

  it("refuses bad agent names", () => {
    for (const name of ["", "Support", "-x", "has space", "a".repeat(65), "ünï"]) {
      const e = configError(() => defineAgent({ name, model: "scripted:echo", instructions: "" }));
      expect(e.message).toMatch(/name: must match/);
      expect(e.fields).toEqual([{ field: "name", message: expect.stringMatching(/must match/) as unknown }]);
    }
    expect(defineAgent({ name: "a".repeat(64), model: "scripted:echo", instructions: "" }).name).toHaveLength(
      64,
    );
  });

  it("refuses tool names providers reject, naming the agent and tool", () => {
    const e = configError(() =>
      defineAgent({
        name: "support",
        model: "scripted:echo",
        instructions: "",
        tools: { "look up": lookup },
      }),
    );
    expect(e.message).toMatch(/agent "support": tools\.look up: tool name must match/);
    configError(() =>
      defineAgent({
        name: "support",
        model: "scripted:echo",
        instructions: "",
        tools: { ["t".repeat(65)]: lookup },
      }),
    );
  });

  it("re-validates tools not made with tool(), naming them", () => {
    const e = configError(() =>
      defineAgent({
        name: "support",
        model: "scripted:echo",
        instructions: "",
        tools: { refund: { ...lookup, effect: "maybe" as "pure" } },
      }),
    );
    expect(e.message).toMatch(/agent "support" tool "refund": effect: must be one of/);
  });

  it("refuses unknown providers, listing the valid ones", () => {
    const e = configError(() => defineAgent({ name: "x", model: "gemini:pro", instructions: "" }));
    expect(e.message).toMatch(/"openai", "anthropic", "compatible", "scripted"/);
    configError(() => defineAgent({ name: "x", model: "openai:", instructions: "" }));
    configError(() => defineAgent({ name: "x", model: "gpt-4o", instructions: "" }));
  });

  it("refuses bad limits", () => {
    expect(
      configError(() =>
        defineAgent({ name: "x", model: "scripted:echo", instructions: "", limits: { maxSteps: 0 } }),
      ).message,
    ).toMatch(/limits\.maxSteps: must be a positive integer/);
    expect(
      configError(() =>
        defineAgent({
          name: "x",
          model: "scripted:echo",
          instructions: "",
          limits: { maxStep: 3 } as unknown as { maxSteps: number },
        }),
      ).message,
    ).toMatch(/unknown key "limits\.maxStep": did you mean "limits\.maxSteps"\?/);
  });

  it("refuses a context budget too small to hold a summary and a turn", () => {
    const ctx = (maxTokens: number) => () =>
      defineAgent({ name: "x", model: "scripted:echo", instructions: "", context: { maxTokens } });
    expect(configError(ctx(100)).message).toMatch(/context\.maxTokens: must be at least 256 \(got 100\)/);
    expect(configError(ctx(0)).message).toMatch(/context\.maxTokens: must be a positive integer/);
    expect(ctx(256)().context).toEqual({ maxTokens: 256 });
  });
});

describe("defineConfig()", () => {
  it("refuses duplicate agent names", () => {
    const a = defineAgent({ name: "dup", model: "scripted:echo", instructions: "" });
    const e = configError(() => defineConfig({ agents: [a, { ...a }] }));
    expect(e.message).toMatch(/agents\[1\]\.name: duplicate agent name "dup"/);
  });

  it("validates model settings and keeps the caller's object", () => {
    const models = { compatible: { baseURL: "http://127.0.0.1:1/v1" } };
    const cfg = defineConfig({ agents: [], models });
    expect(cfg.models).toBe(models);
    expect(
      configError(() => defineConfig({ agents: [], models: { compatible: { baseUrl: "x" } } as never }))
        .message,
    ).toMatch(/models\.compatible/);
    expect(configError(() => defineConfig({ agents: "x" } as never)).message).toMatch(
      /agents: must be an array/,
    );
    expect(configError(() => defineConfig({ agents: [], agent: [] } as never)).message).toBe(
      'defineConfig(): unknown key "agent": did you mean "agents"?',
    );
  });

  it("is idempotent on its own output", () => {
    const cfg = defineConfig({
      agents: [defineAgent({ name: "x", model: "scripted:echo", instructions: "i", tools: { lookup } })],
    });
    expect(defineConfig(cfg)).toEqual(cfg);
  });
});

describe("unknown keys", () => {
  const agent = { name: "support", model: "scripted:echo", instructions: "" };
  const base = { description: "d", input: z.object({}), effect: "pure" as const, run: () => 1 };

  it("refuses a misspelled agent option with the closest valid name", () => {
    // `tool` for `tools` would otherwise start an agent with no tools.
    const e = configError(() => defineAgent({ ...agent, tool: { lookup } } as never));
    expect(e.message).toBe('defineAgent() agent "support": unknown key "tool": did you mean "tools"?');
    expect(e.fields).toEqual([{ field: "tool", message: 'unknown key "tool": did you mean "tools"?' }]);
    // Reported before the value checks, so a misspelled name is named as such.
    expect(configError(() => defineAgent({ nmae: "x", model: "scripted:echo" } as never)).message).toBe(
      'defineAgent(): unknown key "nmae": did you mean "name"?',
    );
    expect(configError(() => defineAgent({ ...agent, Temprature: 0 } as never)).message).toMatch(
      /unknown key "Temprature": did you mean "temperature"\?/,
    );
  });

  it("lists the known keys when none is close", () => {
    const e = configError(() => defineAgent({ ...agent, prompt: "x" } as never));
    expect(e.message).toBe(
      'defineAgent() agent "support": unknown key "prompt"; known keys: "name", "model", "instructions", ' +
        '"tools", "limits", "temperature", "maxOutputTokens", "cache", "memory", "context"',
    );
  });

  it("refuses unknown tool options, also of tools not made with tool()", () => {
    expect(configError(() => tool({ ...base, requireApproval: true } as never)).message).toBe(
      'tool(): unknown key "requireApproval": did you mean "requiresApproval"?',
    );
    expect(configError(() => tool({ ...base, timeout: 5 } as never)).message).toMatch(
      /unknown key "timeout": did you mean "timeoutMs"\?/,
    );
    const e = configError(() =>
      defineAgent({ ...agent, tools: { refund: { ...lookup, efect: "pure" } as never } }),
    );
    expect(e.message).toBe(
      'defineAgent() agent "support" tool "refund": unknown key "efect": did you mean "effect"?',
    );
    expect(configError(() => tool({ ...base, cache: { ttl: 5_000 } } as never)).message).toBe(
      'tool(): unknown key "cache.ttl": did you mean "cache.ttlMs"?',
    );
  });

  it("refuses unknown keys in nested agent options", () => {
    const cases: [object, string][] = [
      [{ memory: { recal: { k: 3 } } }, '"memory.recal": did you mean "memory.recall"?'],
      [{ memory: { recall: { K: 3 } } }, '"memory.recall.K": did you mean "memory.recall.k"?'],
      [
        { memory: { tools: { namespce: "tenant" } } },
        '"memory.tools.namespce": did you mean "memory.tools.namespace"?',
      ],
      [
        { memory: { recall: { k: 3, namespace: { nam: "kb" } } } },
        '"memory.recall.namespace.nam": did you mean "memory.recall.namespace.name"?',
      ],
      [{ context: { maxToken: 1_000 } }, '"context.maxToken": did you mean "context.maxTokens"?'],
      [{ temperature: 0, cache: { lm: true } }, '"cache.lm": did you mean "cache.llm"?'],
      [
        { temperature: 0, cache: { llm: { ttl: 5_000 } } },
        '"cache.llm.ttl": did you mean "cache.llm.ttlMs"?',
      ],
    ];
    for (const [extra, text] of cases) {
      expect(configError(() => defineAgent({ ...agent, ...extra })).message).toBe(
        `defineAgent() agent "support": unknown key ${text}`,
      );
    }
  });

  it("refuses unknown keys in model settings and in the server section", () => {
    expect(
      configError(() => defineConfig({ agents: [], models: { compatible: { baseUrl: "x" } } as never })),
    ).toEqual({
      message:
        'defineConfig(): unknown key "models.compatible.baseUrl": did you mean "models.compatible.baseURL"?',
      fields: [
        {
          field: "models.compatible.baseUrl",
          message: 'unknown key "models.compatible.baseUrl": did you mean "models.compatible.baseURL"?',
        },
      ],
    });
    expect(configError(() => defineConfig({ agents: [], models: { opneai: {} } as never })).message).toMatch(
      /unknown key "models\.opneai": did you mean "models\.openai"\?/,
    );
    expect(
      configError(() => defineConfig({ agents: [], server: { wroker: { concurrency: 2 } } })).message,
    ).toBe('defineConfig(): unknown key "server.wroker": did you mean "server.worker"?');
    expect(
      configError(() => defineConfig({ agents: [], server: { worker: { concurency: 2 } } })).fields,
    ).toEqual([
      {
        field: "worker.concurency",
        message: 'unknown key "server.worker.concurency": did you mean "server.worker.concurrency"?',
      },
    ]);
    // Values are left to resolveSettings (the environment may still override them).
    expect(defineConfig({ agents: [], server: { http: { port: "env decides" } } }).server).toEqual({
      http: { port: "env decides" },
    });
  });

  it("names an unknown key of a hand-built agent in a config", () => {
    const e = configError(() => defineConfig({ agents: [{ ...defineAgent(agent), tool: {} } as never] }));
    expect(e.message).toBe(
      'defineConfig() agents[0] agent "support": unknown key "tool": did you mean "tools"?',
    );
  });
});

describe("agentVersion()", () => {
  const base = { name: "support", model: "openai:gpt-4o-mini", instructions: "Be brief.", tools: { lookup } };

  it("is a stable short hash", () => {
    const v = agentVersion(defineAgent(base));
    expect(v).toMatch(/^[0-9a-f]{16}$/);
    expect(agentVersion(defineAgent({ ...base }))).toBe(v);
    // Limits and tool order do not change what the model sees.
    expect(agentVersion(defineAgent({ ...base, limits: { maxSteps: 2 } }))).toBe(v);
    const other = tool({ description: "o", input: z.object({}), effect: "pure", run: () => 0 });
    expect(agentVersion(defineAgent({ ...base, tools: { lookup, other } }))).toBe(
      agentVersion(defineAgent({ ...base, tools: { other, lookup } })),
    );
  });

  it("changes with instructions, model, tool description, schema or effect", () => {
    const v = agentVersion(defineAgent(base));
    const variants: AgentOptions[] = [
      { ...base, instructions: "Be verbose." },
      { ...base, model: "openai:gpt-4o" },
      { ...base, tools: { lookup: { ...lookup, description: "Find an order" } } },
      { ...base, tools: { lookup: { ...lookup, effect: "idempotent" as const } } },
      { ...base, tools: { lookup: { ...lookup, input: z.object({ orderId: z.number() }) } } },
      { ...base, tools: { lookup2: lookup } },
    ];
    const versions = variants.map((o) => agentVersion(defineAgent(o)));
    for (const w of versions) expect(w).not.toBe(v);
    expect(new Set(versions).size).toBe(versions.length);
  });
});
