import { z } from "zod";
import { defineAgent, tool } from "./define.js";
import type { AgentDefinition, CapstanConfig, ModelSpec } from "./types.js";

/**
 * The built-in demo agent, used by `capstan dev` when no capstan.config.ts
 * exists: a support agent with one tool of each effect class, all local (no
 * network), so a newcomer sees journaling, idempotency keys and approvals.
 */

const ORDERS: Record<string, { item: string; total: number; status: string }> = {
  A100: { item: "blue mug", total: 12.5, status: "delivered" },
  A101: { item: "desk lamp", total: 49, status: "shipped" },
  A102: { item: "notebook", total: 4.2, status: "processing" },
};

const lookupOrder = tool({
  description: "Look up an order by id (read-only).",
  input: z.object({ orderId: z.string().describe("order id such as A100") }),
  effect: "pure",
  run: ({ orderId }) => ORDERS[orderId] ?? { error: `no order ${orderId}` },
});

const refund = tool({
  description: "Refund an order. The payment API honours idempotency keys, so a retry never pays twice.",
  input: z.object({ orderId: z.string(), amount: z.number().positive() }),
  effect: "idempotent",
  run: ({ orderId, amount }, ctx) => ({
    orderId,
    amount,
    // A real payment API would receive ctx.idempotencyKey; the receipt shows it is stable.
    receipt: `rf_${ctx.idempotencyKey.replace(/[^a-z0-9]/gi, "").slice(-12)}`,
  }),
});

const sendEmail = tool({
  description: "Email the customer. Not idempotent, so it needs a human's approval first.",
  input: z.object({ to: z.string(), subject: z.string(), body: z.string() }),
  effect: "side-effect",
  requiresApproval: true,
  run: ({ to, subject }) => ({ sent: true, to, subject }),
});

export function demoAgent(model: ModelSpec): AgentDefinition {
  return defineAgent({
    name: "demo",
    model,
    instructions:
      "You are a concise support agent for a small shop. Use lookup_order to read orders, refund to refund " +
      "them, and send_email to write to customers. Answer in one or two sentences.",
    tools: { lookup_order: lookupOrder, refund, send_email: sendEmail },
  });
}

export interface DemoModelChoice {
  model: ModelSpec;
  /** Shown at start so nobody mistakes the scripted model for a real one. */
  description: string;
}

/** Pick the demo's model from what the environment offers. */
export function chooseDemoModel(env: {
  openaiApiKey?: string;
  compatibleBaseUrl?: string;
  compatibleModel?: string;
}): DemoModelChoice {
  if (env.compatibleBaseUrl) {
    const id = env.compatibleModel ?? "llama3.2";
    return {
      model: `compatible:${id}`,
      description: `OpenAI-compatible server at ${env.compatibleBaseUrl}, model ${id}`,
    };
  }
  if (env.openaiApiKey) return { model: "openai:gpt-4o-mini", description: "OpenAI gpt-4o-mini" };
  return {
    model: "scripted:tools",
    description:
      "the SCRIPTED model (no LLM configured: it calls the tool named in your message with the JSON in it, " +
      "then reports; set OPENAI_API_KEY or CAPSTAN_COMPATIBLE_BASE_URL for a real model)",
  };
}

export function demoConfig(choice: DemoModelChoice): CapstanConfig {
  return { agents: [demoAgent(choice.model)] };
}
