/**
 * The one workload every system in the benchmark runs: a conversation turn of
 * 3 LLM steps and 2 tool calls, decided by a deterministic script (no network,
 * no randomness):
 *
 *   LLM step 1 → calls `lookup` (effect: pure)        → tool step
 *   LLM step 2 → calls `charge` (effect: idempotent)  → tool step
 *   LLM step 3 → final text (streamed in word deltas)
 *
 * The decision logic and the two tools are shared here; each system wraps them
 * in its own idiom (Capstan: an AI SDK scripted model and `tool()`s; LangGraph:
 * a LangChain chat model and a ToolNode; DBOS: plain functions run as steps).
 */

/** Steps of one conversation: 3 LLM calls + 2 tool calls. */
export const STEPS_PER_RUN = 5;
export const LLM_STEPS_PER_RUN = 3;

export interface WorkloadToolCall {
  toolName: "lookup" | "charge";
  input: Record<string, unknown>;
}

export type WorkloadTurn = { text: string } | { toolCalls: WorkloadToolCall[]; text?: string };

/** The user message of conversation `i`. */
export function userMessage(i: number): string {
  return `order sku-${i % 997} please, conversation ${i}`;
}

/** The sku named in a user message (or a fixed one). */
export function skuOf(text: string): string {
  return /sku-\d+/.exec(text)?.[0] ?? "sku-0";
}

/**
 * The script: `step` is the number of assistant messages since the latest
 * user message; `toolResults` are the tool results seen so far in this turn.
 */
export function decide(step: number, userText: string, toolResults: string[]): WorkloadTurn {
  if (step === 0) return { toolCalls: [{ toolName: "lookup", input: { sku: skuOf(userText) } }] };
  if (step === 1) return { toolCalls: [{ toolName: "charge", input: { amount: priceOf(skuOf(userText)) } }] };
  return {
    text: `Your order is confirmed. I looked it up and charged your card. Details: ${toolResults.join("; ")}`,
  };
}

/** A price derived from the sku (deterministic). */
export function priceOf(sku: string): number {
  let h = 7;
  for (const c of sku) h = (h * 31 + c.charCodeAt(0)) % 10_000;
  return 1 + (h % 500);
}

/** `lookup`, a pure tool: a tiny local computation. */
export function lookup(args: { sku: string }): { sku: string; price: number; inStock: boolean } {
  const price = priceOf(args.sku);
  return { sku: args.sku, price, inStock: price % 7 !== 0 };
}

/**
 * `charge`, an idempotent tool: a local "payment API" that honours
 * idempotency keys (the same key returns the first result, the effect happens
 * once). Bounded: the oldest keys are forgotten past 200,000.
 */
const charges = new Map<string, { chargeId: string; amount: number }>();
let chargeSeq = 0;
export function charge(
  args: { amount: number },
  idempotencyKey: string,
): { chargeId: string; amount: number } {
  const prior = charges.get(idempotencyKey);
  if (prior) return prior;
  if (charges.size >= 200_000) {
    const oldest = charges.keys().next().value;
    if (oldest !== undefined) charges.delete(oldest);
  }
  const result = { chargeId: `ch_${process.pid}_${++chargeSeq}`, amount: args.amount };
  charges.set(idempotencyKey, result);
  return result;
}

/** A delay that honours an abort signal (the "slow model"). */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason instanceof Error ? signal.reason : new Error("aborted"));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal?.reason instanceof Error ? signal.reason : new Error("aborted"));
    };
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
