import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createTestDb, until, type TestDb } from "../support/pg.js";
import {
  startOpenAiTestServer,
  type ChatCompletionsBody,
  type OpenAiTestServer,
} from "../support/openai-server.js";
import { killAll, spawnCapstan, type Proc } from "../support/procs.js";
import { defineAgent } from "../../src/agent/define.js";
import { resolveModel, toolSchemas } from "../../src/agent/models.js";
import { resolveSettings } from "../../src/config/config.js";
import { createMemoryCoordination } from "../../src/coord/index.js";
import type { Coordination } from "../../src/coord/types.js";
import { silentLogger } from "../../src/logger.js";
import { readJournal } from "../../src/state/journal.js";
import { enqueueRun, getRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { appendMessages, createThread, lockThread } from "../../src/state/threads.js";
import type { Run } from "../../src/state/types.js";
import type { LoadedAgent } from "../../src/worker/run-loop.js";
import { createWorker, type Worker } from "../../src/worker/worker.js";

/**
 * Bounded context end to end: a long thread is summarised by journaled LLM
 * steps, the model receives summary + recent messages, and a worker killed
 * around a summarisation neither loses the summary nor makes it twice.
 */

let t: TestDb;
let tenantId: string;
let coord: Coordination;
let worker: Worker | undefined;
const procs: Proc[] = [];
const servers: OpenAiTestServer[] = [];

beforeAll(async () => {
  t = await createTestDb();
  tenantId = (await ensureTenant(t.db, "context")).id;
  coord = createMemoryCoordination({ events: { maxLen: 10_000, ttlMs: 3_600_000 } });
});
afterEach(async () => {
  await worker?.stop({ graceMs: 1000 });
  worker = undefined;
  await killAll(procs.splice(0));
  await Promise.all(servers.splice(0).map((s) => s.close()));
});
afterAll(async () => {
  await coord?.close();
  await t?.drop();
});

const FILLER = "the quick brown fox jumps over the lazy dog and keeps running through the field ".repeat(2);

/** A thread holding `n` alternating user/assistant messages, each ~50 tokens and tagged `#seq`. */
async function seededThread(n: number): Promise<string> {
  const th = await createThread(t.db, tenantId);
  await t.db.tx(async (q) => {
    await lockThread(q, th.id);
    await appendMessages(
      q,
      th.id,
      null,
      Array.from({ length: n }, (_, i) => ({
        role: i % 2 === 0 ? ("user" as const) : ("assistant" as const),
        content: `#${i + 1}: ${FILLER}`,
      })),
    );
  });
  return th.id;
}

async function ask(threadId: string, text: string): Promise<Run> {
  const { run } = await enqueueRun(t.db, {
    tenantId,
    threadId,
    agent: "ctx",
    content: text,
    maxAttempts: 5,
    defaultMaxPending: 1000,
  });
  return run;
}

const settled = (id: string) =>
  until(
    async () => {
      const r = await getRun(t.db, tenantId, id);
      return ["succeeded", "failed", "waiting", "cancelled"].includes(r.status) ? r : null;
    },
    { timeoutMs: 40_000, what: `run ${id} to settle` },
  );

const text = (m: Record<string, unknown> | undefined): string =>
  typeof m?.content === "string" ? m.content : JSON.stringify(m?.content ?? "");
const isSummariser = (b: ChatCompletionsBody) => text(b.messages?.[0]).includes("running summary");
/** The range a summariser request asks for ("Messages a to b:"). */
function rangeOf(b: ChatCompletionsBody): [number, number] {
  const m = /Messages (\d+) to (\d+):/.exec(text(b.messages?.at(-1)));
  if (!m) throw new Error("not a summariser request");
  return [Number(m[1]), Number(m[2])];
}

interface ModelServer {
  server: OpenAiTestServer;
  summaries: () => ChatCompletionsBody[];
  mains: () => ChatCompletionsBody[];
  /** Hold the next request matching `which` open until `release()`; `arrived` resolves when it comes. */
  hold(which: (b: ChatCompletionsBody) => boolean): { arrived: Promise<void>; release: () => void };
}

/** Summariser requests answer `summary of 1-b`; others answer "ok". */
async function modelServer(): Promise<ModelServer> {
  const holds: { which: (b: ChatCompletionsBody) => boolean; arrive: () => void; released: Promise<void> }[] =
    [];
  const server = await startOpenAiTestServer({
    handler: async (body) => {
      const h = holds.findIndex((x) => x.which(body));
      if (h >= 0) {
        const [held] = holds.splice(h, 1);
        held!.arrive();
        await held!.released;
      }
      if (isSummariser(body)) {
        const [, to] = rangeOf(body);
        return { text: `summary of 1-${to}`, usage: { prompt_tokens: 100, completion_tokens: 10 } };
      }
      return { text: "ok", usage: { prompt_tokens: 50, completion_tokens: 1 } };
    },
  });
  servers.push(server);
  return {
    server,
    summaries: () => server.requests.filter(isSummariser),
    mains: () => server.requests.filter((b) => !isSummariser(b)),
    hold(which) {
      let arrive!: () => void;
      let release!: () => void;
      const arrived = new Promise<void>((r) => (arrive = r));
      const released = new Promise<void>((r) => (release = r));
      holds.push({ which, arrive, released });
      return { arrived, release };
    },
  };
}

async function summaryRows(threadId: string) {
  const r = await t.db.query<{ from_seq: number; to_seq: number; summary: string }>(
    "SELECT from_seq::int, to_seq::int, summary FROM thread_summaries WHERE thread_id = $1 ORDER BY to_seq",
    [threadId],
  );
  return r.rows;
}

/** Summaries chain 1..last without gaps or overlaps, one row per summariser range. */
function expectChain(rows: { from_seq: number; to_seq: number; summary: string }[]) {
  expect(rows.length).toBeGreaterThan(0);
  rows.forEach((r, i) => {
    expect(r.from_seq).toBe(i === 0 ? 1 : rows[i - 1]!.to_seq + 1);
    expect(r.summary).toBe(`summary of 1-${r.to_seq}`);
  });
}

describe("bounded context", () => {
  it("a 500-message thread is sent as summary + recent messages under the budget", async () => {
    const maxTokens = 4000;
    const m = await modelServer();
    const def = defineAgent({
      name: "ctx",
      model: resolveModel("compatible:ctx-model", { compatible: { baseURL: m.server.url } }),
      instructions: "Answer briefly.",
      context: { maxTokens },
    });
    const agents = new Map<string, LoadedAgent>([
      ["ctx", { def, model: resolveModel(def.model, {}), tools: toolSchemas(def) }],
    ]);
    const settings = resolveSettings({ flags: { worker: { leaseMs: 5000, pollMs: 100, concurrency: 2 } } });
    worker = createWorker({ db: t.db, coord, agents, settings, logger: silentLogger() });
    await worker.start();

    const threadId = await seededThread(500);
    const run = await ask(threadId, "#501: and now?");
    const done = await settled(run.id);
    expect(done.status, JSON.stringify(done.error)).toBe("succeeded");

    // The summaries chain from message 1 and match the summariser's requests one to one.
    const rows = await summaryRows(threadId);
    expectChain(rows);
    expect(m.summaries().map(rangeOf)).toEqual(rows.map((r) => [r.from_seq, r.to_seq]));
    const covered = rows.at(-1)!.to_seq;
    expect(covered).toBeGreaterThan(400);

    // The model's request: the latest summary in the system prompt, then the
    // messages right after it through the new input, and nothing older.
    expect(m.mains()).toHaveLength(1);
    const req = m.mains()[0]!;
    const [system, ...rest] = req.messages!;
    expect(system?.role).toBe("system");
    expect(text(system)).toContain(`Summary of the earlier conversation (messages 1 to ${covered}):`);
    expect(text(system)).toContain(`summary of 1-${covered}`);
    expect(rest.map((x) => /^#(\d+):/.exec(text(x))?.[1]).map(Number)).toEqual(
      Array.from({ length: 501 - covered }, (_, i) => covered + 1 + i),
    );
    const chars = req.messages!.reduce((n, x) => n + text(x).length, 0);
    expect(Math.ceil(chars / 4)).toBeLessThanOrEqual(maxTokens);

    // Each summarisation is a journaled LLM step before the answer, and its tokens are the run's.
    const journal = await readJournal(t.db, run.id);
    const summarySteps = journal.filter(
      (s) => (s.input as { purpose?: string } | null)?.purpose === "summary",
    );
    expect(summarySteps.map((s) => s.stepNo)).toEqual(rows.map((_, i) => i));
    expect(journal.at(-1)).toMatchObject({ kind: "llm", stepNo: rows.length });
    expect(done.usage).toMatchObject({
      inputTokens: 100 * rows.length + 50,
      outputTokens: 10 * rows.length + 1,
    });

    // The next turn reuses the summary: recent messages are kept so that
    // summarising again is many turns away.
    const next = await ask(threadId, "#503: one more");
    expect((await settled(next.id)).status).toBe("succeeded");
    expect(m.summaries()).toHaveLength(rows.length);
    expect(text(m.mains()[1]!.messages![0])).toContain(`messages 1 to ${covered}`);
  });

  function processWorker(url: string): Proc {
    const p = spawnCapstan(["--config", "test/fixtures/context.config.ts", "worker", "--no-migrate"], {
      DATABASE_URL: t.url,
      CAPSTAN_COMPATIBLE_BASE_URL: url,
      CAPSTAN_LEASE_MS: "2000",
      CAPSTAN_POLL_MS: "200",
      CONTEXT_MAX_TOKENS: "1000",
    });
    procs.push(p);
    return p;
  }

  /** SIGKILL `a` while `held` is open, release it, start a fresh worker; the run, settled and succeeded. */
  async function killThenResume(a: Proc, held: { release: () => void }, url: string, runId: string) {
    a.kill("SIGKILL");
    await a.exited;
    held.release();
    processWorker(url);
    const done = await settled(runId);
    expect(done.status, a.output()).toBe("succeeded");
    return done;
  }

  it("SIGKILL after summarising, before the answer: the resumed run does not summarise again", async () => {
    const m = await modelServer();
    const held = m.hold((b) => !isSummariser(b));
    const a = processWorker(m.server.url);
    const threadId = await seededThread(120);
    const run = await ask(threadId, "#121: and now?");
    await held.arrived;
    const before = await summaryRows(threadId);
    const done = await killThenResume(a, held, m.server.url, run.id);
    expect(done.attempts).toBe(2);

    const rows = await summaryRows(threadId);
    expectChain(rows);
    expect(rows.length).toBeGreaterThan(1);
    expect(rows).toEqual(before); // everything was summarised before the kill, nothing after
    expect(m.summaries()).toHaveLength(rows.length); // each range asked for once
    expect(m.mains()).toHaveLength(2); // the held call, then its re-issue
    const summarySteps = (await readJournal(t.db, run.id)).filter(
      (s) => (s.input as { purpose?: string } | null)?.purpose === "summary",
    );
    expect(summarySteps).toHaveLength(rows.length);
  });

  it("SIGKILL while the summariser is answering: one summary per range, the chain stays whole", async () => {
    const m = await modelServer();
    // Hold the second summarisation: the first is saved, the second is in flight.
    let seen = 0;
    const held = m.hold((b) => isSummariser(b) && ++seen === 2);
    const a = processWorker(m.server.url);
    const threadId = await seededThread(120);
    const run = await ask(threadId, "#121: and now?");
    await held.arrived;
    const heldRange = rangeOf(m.summaries()[1]!);
    await killThenResume(a, held, m.server.url, run.id);

    const rows = await summaryRows(threadId);
    expectChain(rows);
    // The range that was in flight was asked for again (nothing had been
    // saved); every other range exactly once.
    const asked = m.summaries().map((b) => rangeOf(b).join("-"));
    expect(asked.filter((r) => r === heldRange.join("-"))).toHaveLength(2);
    expect(new Set(asked).size).toBe(rows.length);
    expect(asked).toHaveLength(rows.length + 1);
    expect(m.mains()).toHaveLength(1);
  });
});
