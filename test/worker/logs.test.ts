import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { enqueueRun, getRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import type { Run } from "../../src/state/types.js";
import { startOpenAiTestServer, type OpenAiTestServer } from "../support/openai-server.js";
import { createTestDb, until, type TestDb } from "../support/pg.js";
import { killAll, spawnCapstan, type Proc } from "../support/procs.js";
import { parseStrictJson } from "../support/strict-json.js";

/**
 * What an operator sees in a worker's log when runs fail: a real worker
 * process, its stdout and stderr captured separately and every JSON line
 * parsed with a parser that refuses a key written twice.
 */

let t: TestDb;
let model: OpenAiTestServer;
let tenantId: string;
const procs: Proc[] = [];

beforeAll(async () => {
  t = await createTestDb();
  tenantId = (await ensureTenant(t.db, "logs")).id;
  // The provider fails once with a 500 (retried), then refuses the key (401): not retryable.
  model = await startOpenAiTestServer({
    handler: (_body, i) =>
      i === 0 ? { status: 500, message: "upstream hiccup" } : { status: 401, message: "invalid api key" },
  });
});
afterAll(async () => {
  await killAll(procs.splice(0));
  await model?.close();
  await t?.drop();
});

async function start(agent: string, text: string): Promise<Run> {
  const th = await createThread(t.db, tenantId);
  const { run } = await enqueueRun(t.db, {
    tenantId,
    threadId: th.id,
    agent,
    content: text,
    maxAttempts: 3,
    defaultMaxPending: 100,
  });
  return run;
}

const settled = (runId: string) =>
  until(
    async () => {
      const r = await getRun(t.db, tenantId, runId);
      return ["succeeded", "failed"].includes(r.status) ? r : null;
    },
    { timeoutMs: 60_000, what: `run ${runId} to settle` },
  );

describe("worker logs", () => {
  it("a failed run and a failed tool call log at warn with code and message; no key twice", async () => {
    const p = spawnCapstan(["--config", "test/fixtures/failures.config.ts", "worker", "--no-migrate"], {
      DATABASE_URL: t.url,
      MODEL_URL: model.url,
      CAPSTAN_LOG_LEVEL: "info",
    });
    procs.push(p);
    const streams = { stdout: "", stderr: "" };
    p.child.stdout!.on("data", (d: Buffer) => (streams.stdout += d.toString()));
    p.child.stderr!.on("data", (d: Buffer) => (streams.stderr += d.toString()));

    const failing = await start("provider", "hello");
    const throwing = await start("thrower", 'explode {"why": "testing"}');
    expect((await settled(failing.id)).status).toBe("failed");
    expect((await settled(throwing.id)).status).toBe("succeeded"); // the model saw the error and went on
    const lines = () => `${streams.stdout}\n${streams.stderr}`.split("\n").filter((l) => l.startsWith("{"));
    await until(() => lines().some((l) => l.includes('"msg":"run failed"')), {
      what: "the failure's log line",
    });
    p.kill("SIGTERM");
    await p.exited;

    // Every JSON line is JSON with unique keys, at every level.
    const entries = lines().map((l) => {
      try {
        return parseStrictJson(l) as Record<string, unknown>;
      } catch (err) {
        throw new Error(`${(err as Error).message} in log line: ${l}`, { cause: err });
      }
    });
    expect(entries.length).toBeGreaterThan(3);

    const failed = entries.find((e) => e.msg === "run failed" && e.runId === failing.id);
    expect(failed, p.output()).toMatchObject({
      level: 40,
      runId: failing.id,
      tenantId,
      attempt: 1,
      workerId: expect.any(String) as unknown,
      error: { code: "model_error", message: expect.stringMatching(/401.*invalid api key/) as unknown },
    });

    // The retry before it: its own count is `retry`, the run's attempt is not repeated.
    const retry = entries.find((e) => e.msg === "model call failed; retrying" && e.runId === failing.id);
    expect(retry).toMatchObject({ level: 40, attempt: 1, retry: 1, status: 500, stepNo: 0 });

    const tool = entries.find((e) => e.msg === "tool call failed" && e.runId === throwing.id);
    expect(tool).toMatchObject({
      level: 40,
      attempt: 1,
      tool: "explode",
      stepNo: 1,
      error: {
        code: "tool_error",
        message: expect.stringContaining("the tool exploded (testing)") as unknown,
      },
    });
  });
});
