import { describe, expect, it } from "vitest";
import { spawnCapstan } from "../support/procs.js";

/**
 * A worker refuses a config with a misspelled key before it touches anything.
 * The database URL points nowhere: a worker that accepted the config would get
 * as far as connecting and exit 1 with "cannot reach PostgreSQL" instead.
 */
const env = { DATABASE_URL: "postgres://postgres@127.0.0.1:1/capstan" };

async function worker(config: string) {
  const p = spawnCapstan(["--config", config, "worker", "--no-migrate"], env);
  const { code } = await p.exited;
  return { code, out: p.output() };
}

describe("strict config at worker start", () => {
  it("refuses a misspelled agent option, naming the file, the agent and the closest valid key", async () => {
    const r = await worker("test/fixtures/misspelled.config.ts");
    expect(r.code, r.out).toBe(2);
    expect(r.out).toContain("test/fixtures/misspelled.config.ts: failed to load");
    expect(r.out).toContain('defineAgent() agent "support": unknown key "tool": did you mean "tools"?');
    expect(r.out).not.toMatch(/cannot reach PostgreSQL/);
  });

  it("refuses a misspelled server setting with the closest valid name", async () => {
    const r = await worker("test/fixtures/misspelled-server.config.ts");
    expect(r.code, r.out).toBe(2);
    expect(r.out).toContain(
      'unknown key "server.worker.concurency": did you mean "server.worker.concurrency"?',
    );
    expect(r.out).not.toMatch(/cannot reach PostgreSQL/);
  });
});
