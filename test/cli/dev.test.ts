import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createClient } from "../../src/client/index.js";
import { until } from "../support/pg.js";
import { killAll, spawnCapstan, type Proc } from "../support/procs.js";

/**
 * `capstan dev` end to end as a newcomer meets it: one process on embedded
 * PostgreSQL, a conversation with a tool call over HTTP and SSE, a restart,
 * and the history still there.
 */

const dataDir = mkdtempSync(join(tmpdir(), "capstan-dev-"));
const lockDir = mkdtempSync(join(tmpdir(), "capstan-lock-"));
const procs: Proc[] = [];
afterAll(async () => {
  await killAll(procs);
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(lockDir, { recursive: true, force: true });
});

async function startDev(dir = dataDir): Promise<{ proc: Proc; url: string; key: string }> {
  const proc = spawnCapstan(["dev", "--port", "0", "--data-dir", dir], { CAPSTAN_LOG_LEVEL: "warn" });
  procs.push(proc);
  const banner = await until(
    () => {
      if (proc.child.exitCode !== null) throw new Error("capstan dev exited:\n" + proc.output());
      const m = /running at (http:\/\/\S+)[\s\S]*key:\s+(cap_\S+)/.exec(proc.output());
      return m ? { url: m[1]!, key: m[2]! } : null;
    },
    { timeoutMs: 120_000, what: "the dev banner" },
  );
  return { proc, ...banner };
}

describe("capstan dev", () => {
  it("has a conversation with tool calls, restarts, and keeps the thread history", async () => {
    const first = await startDev();
    expect(first.proc.output()).toMatch(/SCRIPTED model/);
    expect(first.proc.output()).toContain("curl -sN $CAPSTAN_URL/v1/runs/$R/events");
    const client = createClient({ baseUrl: first.url, apiKey: first.key });
    const thread = await client.threads.create({ metadata: { who: "newcomer" } });
    const run = await client.runs.create(thread.id, {
      agent: "demo",
      input: 'lookup_order {"orderId": "A100"}',
    });
    const events: { id: string; event: string; data: unknown }[] = [];
    for await (const e of client.runs.stream(run.id)) events.push(e);
    const types = events.map((e) => e.event);
    expect(types[0]).toBe("run.started");
    expect(types).toContain("tool.started");
    expect(types).toContain("tool.completed");
    expect(types.at(-1)).toBe("run.succeeded");
    const coarse = events.filter((e) => !e.id.includes(".")).map((e) => Number(e.id));
    expect(coarse).toEqual(coarse.map((_, i) => i + 1));
    const before = await client.threads.messages(thread.id);
    expect(before.data.map((m) => m.role)).toEqual(["user", "assistant", "tool", "assistant"]);
    expect(JSON.stringify(before.data[3]?.content)).toContain("blue mug");

    first.proc.kill("SIGTERM");
    expect((await first.proc.exited).code).toBe(0);

    const second = await startDev();
    expect(second.key).toBe(first.key); // the dev key survives too
    const again = createClient({ baseUrl: second.url, apiKey: second.key });
    const after = await again.threads.messages(thread.id);
    expect(after.data).toEqual(before.data);
    const next = await again.runs.create(thread.id, { agent: "demo", input: "thanks" });
    const done = await again.runs.wait(next.id, { timeout: 30 });
    expect(done.status).toBe("succeeded");
    expect((await again.threads.messages(thread.id)).data.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5, 6]);
  }, 180_000); // two starts of embedded PostgreSQL: slow on a loaded 2-core machine

  it("owns its data directory: a second process is refused, the first loses nothing, and neither a clean exit nor SIGKILL leaves it blocked", async () => {
    const keysCreate = async (tenant: string) => {
      const p = spawnCapstan(["keys", "create", "--tenant", tenant], { CAPSTAN_DATA_DIR: lockDir });
      const { code } = await p.exited;
      return { code, stdout: p.stdout(), stderr: p.stderr(), out: p.output() };
    };
    const lockFile = join(lockDir, "capstan.lock");
    const first = await startDev(lockDir);
    const client = createClient({ baseUrl: first.url, apiKey: first.key });
    await client.threads.create({ metadata: { before: true } });

    // A second process on the same files would have been a second writer: refused, and says why.
    const refused = await keysCreate("x");
    expect(refused.code, refused.out).toBe(3);
    expect(refused.stdout).toBe("");
    expect(refused.stderr).toContain(`capstan dev (pid ${first.proc.child.pid}, since `);
    expect(refused.stderr).toContain(`is using the data directory ${lockDir}; stop it, or set DATABASE_URL`);
    // The first loses nothing: its key, its data and its writes still work.
    const thread = await client.threads.create({ metadata: { after: true } });
    expect((await client.threads.get(thread.id)).metadata).toEqual({ after: true });

    // A clean exit releases the lock; the second process then succeeds, and its key is kept.
    first.proc.kill("SIGTERM");
    expect((await first.proc.exited).code).toBe(0);
    expect(existsSync(lockFile)).toBe(false);
    const created = await keysCreate("x");
    expect(created.code, created.out).toBe(0);
    expect(created.stdout).toMatch(/^cap_\S+\n$/);
    const key = created.stdout.trim();

    const second = await startDev(lockDir);
    const asX = createClient({ baseUrl: second.url, apiKey: key });
    expect((await asX.threads.create({})).id).toMatch(/^[0-9a-f-]{36}$/);
    // SIGKILL leaves the lock file behind; its owner is gone, so it does not block.
    second.proc.kill("SIGKILL");
    await second.proc.exited;
    expect(existsSync(lockFile)).toBe(true);
    const afterKill = await keysCreate("y");
    expect(afterKill.code, afterKill.out).toBe(0);
    expect(afterKill.stdout).toMatch(/^cap_\S+\n$/);
    expect(existsSync(lockFile)).toBe(false);
  }, 300_000);
});
