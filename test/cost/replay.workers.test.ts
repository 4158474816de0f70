/**
 * Issue #8, "a replayed step never calls the model again", as a cost check:
 * the model server is the provider's meter. A worker process is SIGKILLed
 * after LLM step 0 is journaled, while its second LLM call (step 2, after a
 * tool) is in flight; another worker resumes the run from the journal.
 * test/worker/crash.test.ts "(c) SIGKILL between steps" proves the same
 * replay rule by counting calls of a scripted model; this one counts what an
 * OpenAI-compatible provider received and billed, and checks the books: step 0
 * is requested and paid for once, and Postgres records each journaled call's
 * tokens once (the killed call is the only one billed and not journaled).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readJournal } from "../../src/state/journal.js";
import { obj } from "../ingress/harness.js";
import type { ChatCompletionsBody, OpenAiTestReply } from "../support/openai-server.js";
import { until } from "../support/pg.js";
import { runIds, startCostCluster, type CostCluster } from "./workers-harness.js";

const afterTool = (b: ChatCompletionsBody) => (b.messages ?? []).some((m) => m.role === "tool");

let c: CostCluster;
let hold: { arrived: boolean; release: () => void } | undefined;

beforeAll(async () => {
  c = await startCostCluster({
    handler: async (body): Promise<OpenAiTestReply> => {
      if (!afterTool(body)) {
        return {
          toolCalls: [{ name: "catalog", arguments: { sku: "R" } }],
          usage: { prompt_tokens: 100, completion_tokens: 20 },
        };
      }
      if (hold && !hold.arrived) {
        // The first step-2 call is held open until the test has killed its worker.
        const h = hold;
        h.arrived = true;
        await new Promise<void>((resolve) => (h.release = resolve));
      }
      return { text: "restocked R", usage: { prompt_tokens: 300, completion_tokens: 7 } };
    },
  });
});
afterAll(async () => {
  hold?.release();
  await c?.close();
});

describe("replayed LLM steps cost nothing", () => {
  it("SIGKILL after step 0 is journaled: step 0 is never requested again, its tokens counted once", async () => {
    hold = { arrived: false, release: () => {} };
    const a = c.worker();
    const [id] = runIds([await c.createRun("tools", "catalog R")]);
    await until(() => hold?.arrived, { timeoutMs: 30_000, what: "the step-2 call to reach the model" });
    expect((await readJournal(c.t.db, id!)).map((s) => [s.stepNo, s.kind, s.status])).toEqual([
      [0, "llm", "completed"],
      [1, "tool", "completed"],
    ]);
    a.kill("SIGKILL");
    await a.exited;
    hold.release();

    c.worker();
    const run = await c.settled(id!);
    expect(run.status).toBe("succeeded");
    expect(run.attempts).toBe(2);

    const step0 = c.model.requests.filter((b) => !afterTool(b));
    const step2 = c.model.requests.filter(afterTool);
    expect(step0).toHaveLength(1); // the journaled response was replayed, not re-requested
    expect(step2).toHaveLength(2); // the call in flight at the kill was re-issued, once

    // The books: step 0 (120) + the completed step 2 (307), each once; the killed call
    // was billed by the provider but never journaled, so it is not in the run's usage.
    expect(run.usage).toMatchObject({ input_tokens: 400, output_tokens: 27 });
    const pg = await c.t.db.query<{ i: string; o: string; calls: string }>(
      "SELECT sum(input_tokens) AS i, sum(output_tokens) AS o, sum(llm_calls) AS calls FROM usage_daily",
    );
    expect(pg.rows[0]).toEqual({ i: "400", o: "27", calls: "2" });
    const journal = await readJournal(c.t.db, id!);
    expect(journal.map((s) => [s.stepNo, s.kind, s.inputTokens, s.outputTokens])).toEqual([
      [0, "llm", 100, 20],
      [1, "tool", null, null],
      [2, "llm", 300, 7],
    ]);
    expect(obj(run).error).toBeNull();
  });
});
