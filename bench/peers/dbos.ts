/**
 * Peer: DBOS Transact, on the shared workload.
 *
 * One durable workflow per conversation: each model call and each tool call
 * is a `DBOS.runStep` (5 steps), checkpointed in DBOS's system database on
 * PostgreSQL through a pool of `poolSize` connections. The workflow is
 * invoked directly in this process (DBOS records its status at start and at
 * the end, and each step's output after the step ran).
 */
import { DBOS } from "@dbos-inc/dbos-sdk";
import { charge, decide, delay, lookup, userMessage, type WorkloadToolCall } from "../workload.js";
import { closedLoop, type PeerOptions, type PeerResult } from "./common.js";

interface ModelAnswer {
  text: string;
  toolCalls: Array<WorkloadToolCall & { id: string }>;
}

async function scriptedModel(
  step: number,
  user: string,
  results: string[],
  delayMs: number,
): Promise<ModelAnswer> {
  await delay(delayMs);
  const turn = decide(step, user, results);
  return "toolCalls" in turn
    ? { text: turn.text ?? "", toolCalls: turn.toolCalls.map((c, i) => ({ ...c, id: `call_${step}_${i}` })) }
    : { text: turn.text, toolCalls: [] };
}

export async function runDbos(opts: PeerOptions): Promise<PeerResult> {
  DBOS.setConfig({
    name: "capstan-bench",
    systemDatabaseUrl: opts.databaseUrl,
    systemDatabasePoolSize: opts.poolSize,
    logLevel: "error",
  });

  const conversation = DBOS.registerWorkflow(
    async (user: string): Promise<number> => {
      const results: string[] = [];
      let steps = 0;
      for (let llm = 0; llm < 10; llm++) {
        const answer = await DBOS.runStep(() => scriptedModel(llm, user, results, opts.modelDelayMs), {
          name: "llm",
        });
        steps++;
        if (answer.toolCalls.length === 0) return steps;
        for (const call of answer.toolCalls) {
          const key = `${DBOS.workflowID ?? ""}:${call.id}`;
          const out = await DBOS.runStep(
            async () =>
              call.toolName === "lookup"
                ? JSON.stringify(lookup({ sku: String(call.input.sku) }))
                : JSON.stringify(charge({ amount: Number(call.input.amount) }, key)),
            { name: call.toolName },
          );
          results.push(`${call.toolName}: ${out}`);
          steps++;
        }
      }
      throw new Error("dbos: the conversation did not end");
    },
    { name: "conversation" },
  );

  await DBOS.launch();
  let n = 0;
  try {
    return await closedLoop(opts, () => conversation(userMessage(n++)));
  } finally {
    await DBOS.shutdown({ deregister: true }).catch(() => {});
  }
}
