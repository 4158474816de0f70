/**
 * The HTTP load generator: each conversation is what a real client does with
 * the typed client — POST /v1/threads, POST /v1/threads/:id/runs, then follow
 * GET /v1/runs/:id/events (SSE) to the terminal event — and records when
 * each event arrived. Closed loop: `concurrency` conversations at a time.
 */
import { createClient, type CapstanClient } from "../../src/client/index.js";
import { userMessage } from "../workload.js";
import { nowMs } from "./stats.js";

export interface EventArrival {
  id: string;
  type: string;
  /** Receive time (epoch ms, sub-ms resolution). */
  t: number;
  data: Record<string, unknown>;
}

export interface Conversation {
  i: number;
  runId: string;
  /** Before POST /runs. */
  tPost: number;
  /** The 202 was received. */
  tAccepted: number;
  /** The terminal event was received. */
  tDone: number;
  status: string;
  events: EventArrival[];
}

export function makeClient(baseUrl: string, apiKey: string): CapstanClient {
  return createClient({
    baseUrl,
    apiKey,
    timeoutMs: 120_000,
    stream: { maxRetries: 20, initialDelayMs: 100, maxDelayMs: 2_000 },
  });
}

let seq = 0;

/** One conversation, start to terminal event. `onEvent` sees each event as it arrives. */
export async function converse(
  client: CapstanClient,
  opts: { onAccepted?: (runId: string) => void; onEvent?: (runId: string, e: EventArrival) => void } = {},
): Promise<Conversation> {
  const i = seq++;
  const thread = await client.threads.create();
  const tPost = nowMs();
  const run = await client.runs.create(thread.id, { agent: "bench", input: userMessage(i) });
  const tAccepted = nowMs();
  opts.onAccepted?.(run.id);
  const events: EventArrival[] = [];
  let status = "unknown";
  for await (const ev of client.runs.stream(run.id)) {
    const e: EventArrival = { id: ev.id, type: ev.event, t: nowMs(), data: ev.data };
    // Token deltas ("N.k") are counted but not kept: only coarse events are timed.
    if (!ev.id.includes(".")) events.push(e);
    opts.onEvent?.(run.id, e);
    if (ev.event.startsWith("run.") && ev.event !== "run.started" && ev.event !== "run.waiting") {
      status = ev.event.slice(4);
    }
  }
  return { i, runId: run.id, tPost, tAccepted, tDone: nowMs(), status, events };
}

export interface LoadResult {
  /** Conversations that finished inside the measuring window (after the warm-up). */
  measured: Conversation[];
  /** Every conversation that finished (warm-up and drain included). */
  all: Conversation[];
  windowStart: number;
  windowEnd: number;
  errors: number;
  firstError?: string;
}

/**
 * Closed loop for warmupMs + measureMs; conversations that started and
 * finished inside the window are "measured". `hooks.onWindowStart/End` run at
 * the window edges (for CPU and commit snapshots).
 */
export async function closedLoopHttp(
  client: CapstanClient,
  opts: {
    concurrency: number;
    warmupMs: number;
    measureMs: number;
    /** Give up on the stragglers after this long past the window. */
    drainMs?: number;
    onWindowStart?: () => void | Promise<void>;
    onWindowEnd?: () => void | Promise<void>;
  },
): Promise<LoadResult> {
  const t0 = nowMs();
  const windowStart = t0 + opts.warmupMs;
  const windowEnd = windowStart + opts.measureMs;
  const all: Conversation[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const edge = (at: number, fn?: () => void | Promise<void>): Promise<void> =>
    new Promise((resolve) =>
      setTimeout(
        () => {
          void Promise.resolve(fn?.()).finally(resolve);
        },
        Math.max(0, at - nowMs()),
      ),
    );
  const edges = Promise.all([edge(windowStart, opts.onWindowStart), edge(windowEnd, opts.onWindowEnd)]);
  const loop = async (): Promise<void> => {
    while (nowMs() < windowEnd) {
      try {
        all.push(await converse(client));
      } catch (err) {
        errors++;
        firstError ??= err instanceof Error ? err.message : String(err);
        if (errors > 50 && errors > all.length)
          throw new Error(`too many failed conversations; first: ${firstError}`, { cause: err });
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  };
  const drain = opts.drainMs ?? 60_000;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`load did not drain within ${drain} ms after the window`)),
      opts.warmupMs + opts.measureMs + drain,
    );
  });
  try {
    await Promise.race([Promise.all(Array.from({ length: opts.concurrency }, () => loop())), timeout]);
    await edges;
  } finally {
    clearTimeout(timer);
  }
  // Throughput counts completions inside the window (unbiased in steady state).
  const measured = all.filter((c) => c.tDone >= windowStart && c.tDone <= windowEnd);
  return { measured, all, windowStart, windowEnd, errors, ...(firstError ? { firstError } : {}) };
}
