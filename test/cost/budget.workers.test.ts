/**
 * Issue #8, tenant budgets through real worker processes: a daily budget of N
 * tokens, 20 runs at once over two `capstan worker` processes, each run one
 * LLM call (agent `budget` of test/fixtures/cost.config.ts).
 *
 * The model server bills every call at its worst case, the upper-bound
 * estimate the budget reserves (src/cost/estimate.ts `max`), computed from
 * the request as the worker computes it. The bound under test
 * (src/cost/budget.ts): a call is admitted at `max` while that fits; in the
 * last stretch a call may go ahead on its `likely` estimate, one per worker
 * and tenant at a time, and then overshoot by at most `max − likely`. So
 *
 *   spend ≤ N + W × (max − likely)      (W = 2 workers; ≤ N + one call per worker)
 *
 * N is k whole calls plus a remainder r with likely ≤ r < max, so the last
 * stretch is certainly used and the budget ends fully spent (spend ≥ N): new
 * runs are then refused at the ingress with 402.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { estimateLlmTokens } from "../../src/cost/estimate.js";
import { setTenantBudget } from "../../src/state/usage.js";
import { obj } from "../ingress/harness.js";
import type { ChatCompletionsBody } from "../support/openai-server.js";
import { runIds, startCostCluster, type CostCluster } from "./workers-harness.js";

const RUNS = 20;
const INPUT = "Spend some tokens, please.";
const SYSTEM = "Be brief."; // the `budget` agent's instructions
const MAX_OUT = 50; // its maxOutputTokens
/** What the worker estimates for one call of a run (first step: the user message only). */
const EST = estimateLlmTokens({
  system: SYSTEM,
  messages: [{ role: "user", content: INPUT }],
  maxOutputTokens: MAX_OUT,
});
const K = 8;
const N = K * EST.max + Math.floor((EST.likely + EST.max) / 2);

/** The server side of the same estimate, from the request as a provider receives it. */
function worstCase(body: ChatCompletionsBody): { prompt_tokens: number; completion_tokens: number } {
  const msgs = body.messages ?? [];
  const system = msgs.find((m) => m.role === "system")?.content;
  const rest = msgs.filter((m) => m.role !== "system").map((m) => ({ role: m.role, content: m.content }));
  const maxOut = typeof body.max_tokens === "number" ? body.max_tokens : MAX_OUT;
  const e = estimateLlmTokens({
    ...(typeof system === "string" ? { system } : {}),
    messages: rest,
    maxOutputTokens: maxOut,
  });
  return { prompt_tokens: e.max - maxOut, completion_tokens: maxOut };
}

let c: CostCluster;

beforeAll(async () => {
  c = await startCostCluster({
    // Some latency, so that calls of both workers are in flight together.
    handler: async (body) => {
      await new Promise((r) => setTimeout(r, 150));
      return { text: "spent", usage: worstCase(body) };
    },
  });
  await setTenantBudget(c.t.db, c.tenant.id, { daily: N });
});
afterAll(async () => {
  await c?.close();
});

describe("tenant budget with 20 concurrent runs on two worker processes", () => {
  it("spend ≤ N + one call per worker; later runs fail budget_exceeded; new runs get 402", async () => {
    expect(EST.likely).toBeLessThan(EST.max);
    const w1 = c.worker();
    const w2 = c.worker();
    const ids = runIds(await Promise.all(Array.from({ length: RUNS }, () => c.createRun("budget", INPUT))));
    const runs = await Promise.all(ids.map((id) => c.settled(id)));
    const logs = () => `${w1.output().slice(-3000)}\n${w2.output().slice(-3000)}`;

    const succeeded = runs.filter((r) => r.status === "succeeded");
    const failed = runs.filter((r) => r.status === "failed");
    expect(succeeded.length + failed.length, logs()).toBe(RUNS);
    for (const r of failed) expect(obj(r.error).code, JSON.stringify(r.error)).toBe("budget_exceeded");
    expect(failed.length).toBeGreaterThan(0);
    // Every call billed its upper bound, so the budget admits exactly K calls at their
    // bound, then one or two (one per worker) in the last stretch.
    expect(succeeded.length).toBeGreaterThanOrEqual(K + 1);
    expect(succeeded.length).toBeLessThanOrEqual(K + 2);

    // Spend as recorded in Postgres (the usage rollup every budget reads), and as billed.
    const pg = await c.t.db.query<{ spent: string; calls: string }>(
      "SELECT sum(input_tokens + output_tokens) AS spent, sum(llm_calls) AS calls FROM usage_daily WHERE tenant_id = $1",
      [c.tenant.id],
    );
    const spent = Number(pg.rows[0]!.spent);
    const billed = c.model.log.reduce((s, x) => s + x.promptTokens + x.completionTokens, 0);
    expect(spent).toBe(billed); // nothing the provider billed is missing from the books
    expect(Number(pg.rows[0]!.calls)).toBe(succeeded.length);
    expect(c.model.log).toHaveLength(succeeded.length); // refused runs never reached the model
    const bound = N + 2 * (EST.max - EST.likely);
    expect(spent).toBeLessThanOrEqual(bound);
    expect(spent).toBeGreaterThanOrEqual(N); // the last stretch was spent: the budget is used up
    const runTokens = succeeded.reduce(
      (s, r) => s + Number(obj(r.usage).input_tokens) + Number(obj(r.usage).output_tokens),
      0,
    );
    expect(runTokens).toBe(spent);
    console.info(
      `budget: N=${N}, one call: max ${EST.max} likely ${EST.likely}; spent ${spent} ` +
        `(bound N + 2×(max−likely) = ${bound}); ${succeeded.length} runs succeeded, ${failed.length} failed budget_exceeded`,
    );

    // The ingress refuses new runs now, before anything is queued.
    const before = await c.t.db.query<{ n: string }>("SELECT count(*) AS n FROM runs");
    const refused = await c.createRun("budget", "one more");
    expect(refused.status, refused.text).toBe(402);
    expect(refused.headers.get("content-type")).toMatch(/^application\/problem\+json/);
    expect(obj(refused.body)).toMatchObject({
      code: "budget_exceeded",
      status: 402,
      period: "day",
      budget: N,
      used: spent,
    });
    const after = await c.t.db.query<{ n: string }>("SELECT count(*) AS n FROM runs");
    expect(after.rows[0]!.n).toBe(before.rows[0]!.n);
  });
});
