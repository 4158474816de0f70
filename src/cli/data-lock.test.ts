import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { LOCK_FILE, lockDataDir } from "./data-lock.js";
import { CliError } from "./exit.js";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), "capstan-lock-unit-"));
  dirs.push(d);
  return d;
}

/** A pid that surely belongs to no process: one that just exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], {
    encoding: "utf8",
  });
  return Number(r.stdout);
}

function refusal(fn: () => unknown): CliError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CliError);
    return err as CliError;
  }
  throw new Error("expected the lock to be refused");
}

function writeOwner(dir: string, owner: Record<string, unknown>): void {
  writeFileSync(
    join(dir, LOCK_FILE),
    JSON.stringify({
      host: hostname(),
      command: "capstan dev",
      since: "then",
      token: "t",
      start: null,
      ...owner,
    }),
  );
}

describe("lockDataDir", () => {
  it("gives one owner at a time and is released on close", () => {
    const dir = join(tempDir(), "nested", ".capstan");
    const lock = lockDataDir(dir, "capstan dev");
    const owner = JSON.parse(readFileSync(lock.file, "utf8")) as { pid: number; command: string };
    expect(owner).toMatchObject({ pid: process.pid, command: "capstan dev" });
    // The same process counts too: it is running, under the same start time.
    if (existsSync("/proc/self/stat")) {
      const e = refusal(() => lockDataDir(dir, "capstan keys create"));
      const { since } = JSON.parse(readFileSync(lock.file, "utf8")) as { since: string };
      expect(e.exitCode).toBe(3);
      expect(e.message).toBe(
        `capstan dev (pid ${process.pid}, since ${since}) ` +
          `is using the data directory ${dir}; stop it, or set DATABASE_URL to work on a PostgreSQL server instead`,
      );
    }
    lock.release();
    expect(existsSync(lock.file)).toBe(false);
    lock.release(); // idempotent
    const again = lockDataDir(dir, "capstan keys create");
    again.release();
  });

  it("takes over a lock whose owner is gone, or whose pid now belongs to another process", () => {
    const dir = tempDir();
    writeOwner(dir, { pid: deadPid() });
    const a = lockDataDir(dir, "capstan dev");
    a.release();
    if (existsSync("/proc/self/stat")) {
      // Our own pid, but started at another time: a previous incarnation (a restarted container).
      writeOwner(dir, { pid: process.pid, start: "1" });
      const b = lockDataDir(dir, "capstan dev");
      b.release();
    }
    writeFileSync(join(dir, LOCK_FILE), "not json");
    const c = lockDataDir(dir, "capstan dev");
    expect(JSON.parse(readFileSync(c.file, "utf8"))).toMatchObject({ pid: process.pid });
    c.release();
  });

  it("never takes over a live owner's lock, nor one from another host, and never removes a lock it does not own", () => {
    const dir = tempDir();
    // pid 1 always runs (init); another host's owner cannot be checked.
    writeOwner(dir, { pid: 1 });
    expect(refusal(() => lockDataDir(dir, "x")).message).toMatch(
      /^capstan dev \(pid 1, since then\) is using/,
    );
    writeOwner(dir, { pid: deadPid(), host: "elsewhere" });
    expect(refusal(() => lockDataDir(dir, "x")).message).toContain(
      ` on host elsewhere, since then) is using the data directory ${dir} ` +
        `(if it is no longer running there, delete ${join(dir, LOCK_FILE)})`,
    );

    rmSync(join(dir, LOCK_FILE));
    const mine = lockDataDir(dir, "capstan dev");
    writeOwner(dir, { pid: 1, token: "someone else" });
    mine.release();
    expect(JSON.parse(readFileSync(join(dir, LOCK_FILE), "utf8"))).toMatchObject({ token: "someone else" });
  });
});
