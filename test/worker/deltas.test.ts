import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRedisCoordination } from "../../src/coord/redis/index.js";
import type { Coordination, StreamEvent } from "../../src/coord/types.js";
import { silentLogger } from "../../src/logger.js";
import { listEvents } from "../../src/state/events.js";
import { enqueueRun, getRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import { MAX_DELTA_EVENT_BYTES, PUBLISH_FAILED } from "../../src/worker/publisher.js";
import { startOpenAiTestServer, type OpenAiTestServer } from "../support/openai-server.js";
import { createTestDb, until, type TestDb } from "../support/pg.js";
import { killAll, spawnCapstan, type Proc } from "../support/procs.js";
import { deleteKeys, randomPrefix, REDIS_URL } from "../support/redis.js";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.js";

/**
 * The worker's live event stream, bounded: a real worker process streams a
 * model's answer into Redis (through a TCP proxy the test can cut; the
 * machine's shared Redis is never stopped). A large output goes out as
 * deltas no bigger than MAX_DELTA_EVENT_BYTES, and a Redis outage under a
 * streaming run writes a few warnings with counts, not one per delta.
 */

let t: TestDb;
let model: OpenAiTestServer;
let proxy: TcpProxy;
let coord: Coordination;
let tenantId: string;
const prefix = randomPrefix();
const procs: Proc[] = [];
/** What the model answers next (set per test). */
let answer = "";

beforeAll(async () => {
  t = await createTestDb();
  tenantId = (await ensureTenant(t.db, "deltas")).id;
  // Words are the server's chunks: a few per millisecond, as a fast model streams.
  model = await startOpenAiTestServer({ handler: () => ({ text: answer }), chunkDelayMs: 2 });
  const redis = new URL(REDIS_URL);
  proxy = await startTcpProxy({ targetHost: redis.hostname, targetPort: Number(redis.port || 6379) });
  // The test reads the stream directly, not through the proxy.
  coord = createRedisCoordination({
    url: REDIS_URL,
    keyPrefix: prefix,
    logger: silentLogger(),
    events: { maxLen: 10_000, ttlMs: 600_000 },
  });
});
afterAll(async () => {
  await killAll(procs.splice(0));
  await coord?.close();
  await proxy?.close();
  await model?.close();
  await deleteKeys(prefix).catch(() => {});
  await t?.drop();
});

function worker(): { proc: Proc; stdout: () => string } {
  const proc = spawnCapstan(["--config", "test/fixtures/stream.config.ts", "worker", "--no-migrate"], {
    DATABASE_URL: t.url,
    MODEL_URL: model.url,
    REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
    CAPSTAN_REDIS_PREFIX: prefix,
    CAPSTAN_LOG_LEVEL: "info",
  });
  procs.push(proc);
  let out = "";
  proc.child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
  proc.child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
  return { proc, stdout: () => out };
}

async function run(text: string): Promise<string> {
  const th = await createThread(t.db, tenantId);
  const { run } = await enqueueRun(t.db, {
    tenantId,
    threadId: th.id,
    agent: "talker",
    content: text,
    maxAttempts: 3,
    defaultMaxPending: 100,
  });
  await until(
    async () =>
      ["succeeded", "failed"].includes((await getRun(t.db, tenantId, run.id)).status) ? true : null,
    { timeoutMs: 120_000, what: `run ${run.id} to settle` },
  );
  return run.id;
}

async function streamOf(runId: string): Promise<StreamEvent[]> {
  const out: StreamEvent[] = [];
  for (let after = "0"; ;) {
    const batch = await coord.events.read(runId, after, { count: 1_000 });
    if (batch.length === 0) return out;
    out.push(...batch);
    after = batch[batch.length - 1]!.id;
  }
}

/** ~`bytes` of text in words of ~2 KB (the server's chunks), with multi-byte and escaped characters. */
function bigText(bytes: number): string {
  const word = `${"Grüße «aus» dem 日本 — "}${"x".repeat(1_900)}"\\\n `;
  return word.repeat(Math.ceil(bytes / Buffer.byteLength(word)));
}

describe("worker event stream", () => {
  it("a 1.5 MB answer goes out as bounded deltas that add up to it", async () => {
    const w = worker();
    await until(() => /"msg":"worker started"/.test(w.stdout()), { timeoutMs: 60_000, what: "the worker" });
    answer = bigText(1_500_000);
    const runId = await run("talk a lot");
    expect((await getRun(t.db, tenantId, runId)).status).toBe("succeeded");

    const deltas = (await streamOf(runId)).filter((e) => e.type === "message.delta");
    const bytes = deltas.map((e) => Buffer.byteLength(JSON.stringify(e.data)));
    expect(Math.max(...bytes)).toBeLessThanOrEqual(MAX_DELTA_EVENT_BYTES);
    expect(deltas.length).toBeGreaterThanOrEqual(
      Math.ceil(Buffer.byteLength(answer) / MAX_DELTA_EVENT_BYTES),
    );
    expect(deltas.map((e) => e.data.text).join("")).toBe(answer);
    // The persisted answer is whole too.
    const completed = (await listEvents(t.db, runId, 0, 100)).find((e) => e.type === "message.completed");
    expect(completed?.data.content).toBe(answer);
    w.proc.kill("SIGTERM");
    await w.proc.exited;
  });

  it("Redis cut under a streaming run: the run succeeds, and the failed publishes are a few counted lines", async () => {
    const w = worker();
    await until(() => /"msg":"worker started"/.test(w.stdout()), { timeoutMs: 60_000, what: "the worker" });
    await proxy.stop(); // Redis unreachable from the worker from here on
    try {
      // ~1,500 chunks at 2 ms: seconds of streaming, each 25 ms batch a failed publish.
      answer = "word ".repeat(1_500);
      const runId = await run("talk while Redis is down");
      expect((await getRun(t.db, tenantId, runId)).status).toBe("succeeded");
      w.proc.kill("SIGTERM"); // a graceful stop writes what the throttle still holds
      await w.proc.exited;
    } finally {
      await proxy.start();
    }
    const lines = w
      .stdout()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((e) => e.msg === PUBLISH_FAILED);
    const failures = lines.reduce((n, e) => n + 1 + ((e.suppressed as number | undefined) ?? 0), 0);
    console.log(`redis outage: ${failures} failed publishes in ${lines.length} log lines`);
    expect(failures).toBeGreaterThanOrEqual(20);
    expect(lines.length).toBeLessThanOrEqual(3);
    expect(lines.some((e) => ((e.suppressed as number | undefined) ?? 0) >= 19)).toBe(true);
  });
});
