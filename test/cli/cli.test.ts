import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { enqueueRun } from "../../src/state/scheduler.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createThread } from "../../src/state/threads.js";
import { createTestDb, until, type TestDb } from "../support/pg.js";
import { ROOT, spawnCapstan } from "../support/procs.js";

/**
 * The CLI as a user and a script meet it: real processes, exit codes (the
 * table in `capstan --help`), messages that say what to fix on stderr, and
 * nothing but data on stdout.
 */

let t: TestDb;
beforeAll(async () => {
  t = await createTestDb({ migrate: false });
});
afterAll(async () => {
  await t?.drop();
});

async function cli(args: string[], env: Record<string, string | undefined> = {}) {
  const p = spawnCapstan(args, env);
  const { code } = await p.exited;
  return { code, out: p.output(), stdout: p.stdout(), stderr: p.stderr() };
}

/** Run `fn` over `items`, `n` at a time (each is a Node process on a 2-core machine). */
async function pooled<T, R>(items: T[], n: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: n }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

/** Lines of stderr that are not JSON log lines (what a person reads). */
const messages = (stderr: string) => stderr.split("\n").filter((l) => l && !l.startsWith("{"));

function listen(port: number): Promise<Server | null> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once("error", () => resolve(null)); // already taken by someone else: taken either way
    s.listen(port, "127.0.0.1", () => resolve(s));
  });
}

describe("capstan CLI", () => {
  it("--help lists every command and the exit codes; --version prints package.json's", async () => {
    const r = await cli(["--help"]);
    expect(r.code).toBe(0);
    for (const c of ["dev", "ingress", "worker", "migrate", "keys", "runs", "status"])
      expect(r.stdout).toContain(c);
    expect(r.stdout).toMatch(
      /Exit codes:\n {2}0 +success\n {2}1 .*\n {2}2 .*\n {2}3 .*\n {2}4 .*capstan migrate/,
    );
    const sub = await cli(["keys", "create", "--help"]);
    expect(sub.code).toBe(0);
    expect(sub.stdout).toContain("--tenant");
    const { version } = JSON.parse(readFileSync(`${ROOT}/package.json`, "utf8")) as { version: string };
    const v = await cli(["--version"]);
    expect(v).toMatchObject({ code: 0, stdout: `${version}\n` });
  });

  it("names the flag, what it expects and what it got for every bad flag value, exit code 2", async () => {
    const cases: [string[], string][] = [
      [["worker", "--concurrency", "abc"], '--concurrency: expected a positive whole number, got "abc"'],
      [["worker", "--concurrency", "0"], '--concurrency: expected a positive whole number, got "0"'],
      [["ingress", "--port", "70000"], '--port: expected a whole number from 0 to 65535, got "70000"'],
      [["dev", "--port", "http"], '--port: expected a whole number from 0 to 65535, got "http"'],
      [["runs", "list", "--limit", "0"], '--limit: expected a whole number from 1 to 1000, got "0"'],
      [["runs", "list", "--limit", "1e3"], '--limit: expected a whole number from 1 to 1000, got "1e3"'],
      [
        ["status", "--target-per-worker", "x"],
        '--target-per-worker: expected a positive whole number, got "x"',
      ],
      [["status", "--min-workers", "-1"], '--min-workers: expected a whole number of at least 0, got "-1"'],
      [["status", "--max-workers", "0"], '--max-workers: expected a positive whole number, got "0"'],
      [
        ["runs", "list", "--status", "done"],
        "argument 'done' is invalid. Allowed choices are queued, running",
      ],
      [["worker", "--concurency", "4"], "unknown option '--concurency'"],
      [["keys", "create"], "required option '--tenant <name>' not specified"],
    ];
    // A database that would answer: the flag is refused before anything is opened.
    const results = await pooled(cases, 4, ([args]) => cli(args, { DATABASE_URL: t.url }));
    results.forEach((r, i) => {
      const [args, message] = cases[i]!;
      expect(r.code, `${args.join(" ")}: ${r.out}`).toBe(2);
      expect(r.stderr, args.join(" ")).toContain(message);
      expect(r.stdout, args.join(" ")).toBe("");
    });
  }, 180_000);

  it("says what to fix when PostgreSQL is unreachable or unset, or a setting is wrong", async () => {
    const down = await cli(["worker"], { DATABASE_URL: "postgres://postgres@127.0.0.1:1/capstan" });
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/cannot reach PostgreSQL at 127\.0\.0\.1:1\/capstan/);
    expect(down.stderr).toMatch(/set DATABASE_URL/);
    const unset = await cli(["worker"]);
    expect(unset.code).toBe(2);
    expect(unset.stderr).toMatch(/needs PostgreSQL: set DATABASE_URL/);
    const badPort = await cli(["ingress"], { DATABASE_URL: t.url, PORT: "eighty" });
    expect(badPort.code).toBe(2);
    expect(badPort.stderr).toMatch(/http\.port.*environment variable PORT/);
    for (const r of [down, unset, badPort]) expect(r.stdout).toBe("");
  });

  it("before `capstan migrate`, status says to run it (exit code 4), without a stack trace", async () => {
    for (const args of [["status"], ["status", "--json"]]) {
      const r = await cli(args, { DATABASE_URL: t.url });
      expect(r.code, r.out).toBe(4);
      expect(messages(r.stderr)).toEqual([
        "capstan: the database has no Capstan schema: run `capstan migrate`",
      ]);
      expect(r.stdout).toBe("");
    }
  });

  it("migrates, manages keys and inspects runs; stdout carries only the data", async () => {
    // Info-level logs: they exist, and must all be on stderr.
    const env = { DATABASE_URL: t.url, CAPSTAN_LOG_LEVEL: "info" };
    const m = await cli(["migrate"], env);
    expect(m.code, m.out).toBe(0);
    expect(m.stdout).toMatch(/^applied: 0001_init.*\nschema version \d+ \(this build: \d+\)\n$/);
    expect(m.stderr).toMatch(/"msg":"applied migration"/);
    expect((await cli(["migrate"], env)).stdout).toMatch(/^nothing to apply\n/);

    const created = await cli(["keys", "create", "--tenant", "acme", "--name", "ci"], env);
    expect(created.code).toBe(0);
    // What `KEY=$(capstan keys create …)` captures: the key and nothing else.
    expect(created.stdout).toMatch(/^cap_[A-Za-z0-9_-]+\n$/);
    const key = created.stdout.trim();
    expect(created.stderr).toMatch(/created key .* for tenant acme; it is not shown again/);
    const listed = await cli(["keys", "list", "--tenant", "acme"], env);
    expect(listed.stdout).toContain(key.slice(0, 10));
    expect(listed.stdout).not.toContain(key);
    expect(listed.stdout).toContain("active");
    const revoked = await cli(["keys", "revoke", key.slice(0, 10)], env);
    expect(revoked.code).toBe(0);
    expect((await cli(["keys", "list"], env)).stdout).toContain("revoked");

    const missing = await cli(["runs", "get", "00000000-0000-0000-0000-000000000000"], env);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/not found/);
    expect(missing.stdout).toBe("");

    // A run, as the API would have created it: `runs get` prints the API's run object.
    const tenant = await ensureTenant(t.db, "acme");
    const thread = await createThread(t.db, tenant.id);
    const { run } = await enqueueRun(t.db, {
      tenantId: tenant.id,
      threadId: thread.id,
      agent: "support",
      content: "hello",
      maxAttempts: 3,
      defaultMaxPending: 100,
    });
    const got = await cli(["runs", "get", run.id], env);
    expect(got.code, got.out).toBe(0);
    expect(JSON.parse(got.stdout)).toMatchObject({
      id: run.id,
      thread_id: thread.id,
      agent: "support",
      status: "queued",
      attempts: 0,
      usage: { input_tokens: 0, output_tokens: 0 },
      created_at: run.createdAt.toISOString(),
      started_at: null,
      tenant: "acme",
    });
    const list = await cli(["runs", "list"], env);
    expect(list.code).toBe(0);
    expect(list.stdout).toContain(run.id);

    const status = await cli(["status", "--json"], env);
    expect(status.code, status.out).toBe(0);
    const report = JSON.parse(status.stdout) as Record<string, unknown>;
    expect(report).toMatchObject({
      ready: 1,
      running: 0,
      finished_last_minute: { succeeded: 0, failed: 0, cancelled: 0 },
      workers_with_leases: 0,
      desired_workers: 2,
      rule: { target_in_flight_per_worker: 40, min_workers: 2, max_workers: 10 },
      groups: [{ agent: "support", tenant: "acme", ready: 1, running: 0, max_concurrency: null }],
    });
    expect(typeof report.oldest_ready_age_seconds).toBe("number");
    // snake_case throughout, like the API.
    expect(status.stdout).not.toMatch(/"[a-z]+[A-Z]\w*":/);
    expect((await cli(["status"], env)).stdout).toMatch(/^queue\n/);
  }, 180_000);

  it("the worker ops port: taken when set explicitly stops the worker naming CAPSTAN_OPS_PORT (exit code 3)", async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const port = (taken.address() as { port: number }).port;
    try {
      const r = await cli(["worker"], { DATABASE_URL: t.url, CAPSTAN_OPS_PORT: String(port) });
      expect(r.code, r.out).toBe(3);
      expect(messages(r.stderr)).toEqual([
        `capstan: the worker ops port 127.0.0.1:${port} is in use by another process: ` +
          "set CAPSTAN_OPS_PORT (or worker.opsPort) to a free port, or to 0 for any free port",
      ]);
    } finally {
      taken.close();
    }
  });

  it("a taken HTTP port stops the ingress naming PORT (exit code 3)", async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const port = (taken.address() as { port: number }).port;
    try {
      const r = await cli(["ingress"], { DATABASE_URL: t.url, PORT: String(port) });
      expect(r.code, r.out).toBe(3);
      expect(messages(r.stderr)).toEqual([
        `capstan: the HTTP port 127.0.0.1:${port} is in use by another process: set PORT (or --port) to a free port`,
      ]);
    } finally {
      taken.close();
    }
  });

  it("the worker ops port: unset, a taken 7071 falls back to a free port, logged", async () => {
    const held = await listen(7071);
    try {
      const p = spawnCapstan(["worker"], { DATABASE_URL: t.url, CAPSTAN_OPS_PORT: undefined });
      try {
        const url = await until(
          () => {
            if (p.child.exitCode !== null) throw new Error("worker exited:\n" + p.output());
            const line = p
              .stderr()
              .split("\n")
              .find((l) => l.includes("the default ops port 7071 is in use"));
            return line ? (JSON.parse(line) as { url: string; port: number }) : null;
          },
          { timeoutMs: 60_000, what: "the fallback ops port log line" },
        );
        expect(url.port).not.toBe(7071);
        const health = await fetch(`${url.url}/healthz`);
        expect(health.status).toBe(200);
        const ready = (await (await fetch(`${url.url}/readyz`)).json()) as { status: string; checks: object };
        expect(Object.keys(ready).sort()).toEqual(["checks", "status"]);
      } finally {
        p.kill("SIGTERM");
        expect((await p.exited).code).toBe(0);
      }
    } finally {
      held?.close();
    }
  });
});
