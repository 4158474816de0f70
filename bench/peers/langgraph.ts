/**
 * Peer: LangGraph.js with its PostgreSQL checkpointer, on the shared workload.
 *
 * A StateGraph over MessagesAnnotation: an `agent` node calling a LangChain
 * chat model (a scripted fake: same decisions as Capstan's scripted model, no
 * network) and the prebuilt `ToolNode` with the two tools, routed by
 * `toolsCondition`. PostgresSaver checkpoints every super-step (5 per run:
 * agent, tools, agent, tools, agent; plus the input checkpoint) on a pg pool
 * of `poolSize` connections. `durability` is LangGraph's own switch:
 * "sync" waits for each checkpoint before the next step (comparable to
 * Capstan's journal-before-continue), "async" (LangGraph's default) writes it
 * while the next step runs.
 */
import { randomUUID } from "node:crypto";
import pg from "pg";
import { z } from "zod";
import { BaseChatModel } from "@langchain/core/language_models/chat_models";
import { AIMessage, type BaseMessage, HumanMessage, ToolMessage } from "@langchain/core/messages";
import type { ChatResult } from "@langchain/core/outputs";
import { tool } from "@langchain/core/tools";
import { END, MessagesAnnotation, START, StateGraph } from "@langchain/langgraph";
import { ToolNode, toolsCondition } from "@langchain/langgraph/prebuilt";
import { PostgresSaver } from "@langchain/langgraph-checkpoint-postgres";
import { charge, decide, delay, lookup, userMessage } from "../workload.js";
import { closedLoop, type PeerOptions, type PeerResult } from "./common.js";

/** A LangChain chat model that answers with the workload script. */
class ScriptedChatModel extends BaseChatModel {
  constructor(private readonly delayMs: number) {
    super({});
  }

  _llmType(): string {
    return "scripted";
  }

  async _generate(messages: BaseMessage[], options: this["ParsedCallOptions"]): Promise<ChatResult> {
    await delay(this.delayMs, options.signal);
    let step = 0;
    let user = "";
    for (let i = messages.length - 1; i >= 0; i--) {
      const m = messages[i]!;
      if (HumanMessage.isInstance(m)) {
        user = typeof m.content === "string" ? m.content : JSON.stringify(m.content);
        break;
      }
      if (AIMessage.isInstance(m)) step++;
    }
    const results = messages
      .filter((m): m is ToolMessage => ToolMessage.isInstance(m))
      .map(
        (m) =>
          `${m.name ?? "tool"}: ${typeof m.content === "string" ? m.content : JSON.stringify(m.content)}`,
      );
    const turn = decide(step, user, results);
    const message =
      "toolCalls" in turn
        ? new AIMessage({
            content: turn.text ?? "",
            tool_calls: turn.toolCalls.map((c, i) => ({
              id: `call_${step}_${i}`,
              name: c.toolName,
              args: c.input,
              type: "tool_call" as const,
            })),
          })
        : new AIMessage({ content: turn.text });
    const text = typeof message.content === "string" ? message.content : "";
    return { generations: [{ message, text }] };
  }
}

export async function runLangGraph(
  opts: PeerOptions & { durability: "sync" | "async" },
): Promise<PeerResult> {
  const pool = new pg.Pool({ connectionString: opts.databaseUrl, max: opts.poolSize });
  pool.on("error", () => {});
  const checkpointer = new PostgresSaver(pool);
  await checkpointer.setup();

  const lookupTool = tool(async (args: { sku: string }) => JSON.stringify(lookup(args)), {
    name: "lookup",
    description: "Look up an item (read-only)",
    schema: z.object({ sku: z.string() }),
  });
  const chargeTool = tool(
    async (args: { amount: number }, config) => {
      // No idempotency key in LangGraph: derive one from the thread and the tool call id.
      const configurable = (config as { configurable?: { thread_id?: string } }).configurable;
      const callId = (config as { toolCall?: { id?: string } }).toolCall?.id ?? "";
      return JSON.stringify(charge(args, `${configurable?.thread_id ?? ""}:${callId}`));
    },
    {
      name: "charge",
      description: "Charge the customer (the payment API honours idempotency keys)",
      schema: z.object({ amount: z.number() }),
    },
  );
  const model = new ScriptedChatModel(opts.modelDelayMs);
  const graph = new StateGraph(MessagesAnnotation)
    .addNode("agent", async (state: typeof MessagesAnnotation.State) => ({
      messages: [await model.invoke(state.messages)],
    }))
    .addNode("tools", new ToolNode([lookupTool, chargeTool]))
    .addEdge(START, "agent")
    .addConditionalEdges("agent", toolsCondition, ["tools", END])
    .addEdge("tools", "agent")
    .compile({ checkpointer });

  let n = 0;
  const once = async (): Promise<number> => {
    const i = n++;
    const out = await graph.invoke(
      { messages: [new HumanMessage(userMessage(i))] },
      { configurable: { thread_id: randomUUID() }, durability: opts.durability },
    );
    const last = out.messages.at(-1);
    if (!last || !AIMessage.isInstance(last) || (last.tool_calls?.length ?? 0) > 0) {
      throw new Error("langgraph: the conversation did not end with a final answer");
    }
    // agent, tools, agent, tools, agent
    return out.messages.filter((m) => AIMessage.isInstance(m) || ToolMessage.isInstance(m)).length;
  };
  try {
    return await closedLoop(opts, once);
  } finally {
    await pool.end().catch(() => {});
  }
}
