/**
 * The benchmark agent for Capstan worker processes (`capstan --config
 * bench/capstan.bench.config.ts worker`). The model is Capstan's scripted
 * model (AI SDK LanguageModelV3, streamed through `streamText` like a real
 * provider) running the shared workload script; BENCH_MODEL_DELAY_MS (default
 * 0) is the time each model call takes before it answers.
 */
import { z } from "zod";
import { defineAgent, defineConfig, tool, type AgentDefinition } from "../src/index.js";
import { createScriptedModel, toolOutputText, type ScriptCallInfo } from "../src/agent/scripted.js";
import { charge, decide, lookup } from "./workload.js";

const delayMs = Number(process.env.BENCH_MODEL_DELAY_MS ?? 0);

function lastUserText(info: ScriptCallInfo): string {
  for (let i = info.messages.length - 1; i >= 0; i--) {
    const m = info.messages[i];
    if (m?.role === "user") {
      return m.content.flatMap((p) => (p.type === "text" ? [p.text] : [])).join("\n");
    }
  }
  return "";
}

function toolResults(info: ScriptCallInfo): string[] {
  const out: string[] = [];
  for (const m of info.messages) {
    if (m.role !== "tool") continue;
    for (const p of m.content) {
      if (p.type === "tool-result") out.push(`${p.toolName}: ${toolOutputText(p.output)}`);
    }
  }
  return out;
}

/** The benchmark agent with a model that takes `modelDelayMs` per call. */
export function benchAgent(modelDelayMs: number): AgentDefinition {
  return defineAgent({
    name: "bench",
    model: createScriptedModel((info) => decide(info.step, lastUserText(info), toolResults(info)), {
      modelId: `bench-${modelDelayMs}ms`,
      delayMs: modelDelayMs,
    }),
    instructions: "Look the order up, charge it, then confirm.",
    tools: {
      lookup: tool({
        description: "Look up an item (read-only)",
        input: z.object({ sku: z.string() }),
        effect: "pure",
        run: (args) => lookup(args),
      }),
      charge: tool({
        description: "Charge the customer (the payment API honours idempotency keys)",
        input: z.object({ amount: z.number() }),
        effect: "idempotent",
        run: (args, ctx) => charge(args, ctx.idempotencyKey),
      }),
    },
    limits: { wallTimeMs: 3_600_000 },
  });
}

export default defineConfig({ agents: [benchAgent(delayMs)] });
