import { randomBytes } from "node:crypto";
import { linkSync, mkdirSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { resolve } from "node:path";
import { CliError, EXIT } from "./exit.js";

/**
 * One owner per embedded data directory. PGlite is an in-process database:
 * a second process opening the same files writes past the first one (its
 * writes are lost, the files can be corrupted). So the CLI locks the
 * directory before opening it and refuses a second owner.
 *
 * The lock is `<dataDir>/capstan.lock`, a JSON file naming its owner (pid,
 * host, process start time, command). It is created atomically and only if
 * absent (`link` of a complete temporary file: the lock is never seen half
 * written), and removed on close and on process exit. An owner killed with
 * SIGKILL leaves it behind; such a lock is stale, and taken over, when its
 * owner was on this host and is gone: no process with that pid, or (Linux)
 * one that started at another time (the pid was reused, e.g. a restarted
 * container). A stopped (SIGSTOP) owner still holds it. A lock from another
 * host cannot be checked and is never taken over; the message names the
 * file to delete. Takeovers are serialised by a second exclusive file, so
 * two processes finding the same stale lock cannot both win.
 */

export const LOCK_FILE = "capstan.lock";
/** A takeover guard this old was left by a process killed in the middle of one (they take microseconds). */
const GUARD_STALE_MS = 10_000;

export interface DataDirLock {
  readonly file: string;
  /** Remove the lock if it is still ours. Idempotent. */
  release(): void;
}

interface Owner {
  pid: number;
  host: string;
  /** Process start time in clock ticks since boot (Linux), to tell a reused pid; null elsewhere. */
  start: string | null;
  command: string;
  since: string;
  token: string;
}

function startTime(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Field 22; the fields after the command name (which may hold spaces) start at field 3.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? null;
  } catch {
    return null;
  }
}

const errCode = (err: unknown): unknown => (err as NodeJS.ErrnoException | null)?.code;

/** The lock's owner; null when the file is gone; "unreadable" when it holds something else. */
function readOwner(file: string): Owner | null | "unreadable" {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    if (errCode(err) === "ENOENT") return null;
    throw err;
  }
  try {
    const o = JSON.parse(text) as Partial<Owner>;
    if (typeof o.pid === "number" && typeof o.host === "string" && typeof o.token === "string")
      return {
        pid: o.pid,
        host: o.host,
        start: typeof o.start === "string" ? o.start : null,
        command: typeof o.command === "string" ? o.command : "capstan",
        since: typeof o.since === "string" ? o.since : "?",
        token: o.token,
      };
  } catch {
    // not JSON: fall through
  }
  return "unreadable";
}

/** Is the owner (possibly) still running? Unknowable for another host: yes. */
function running(o: Owner): boolean {
  if (o.host !== hostname()) return true;
  try {
    process.kill(o.pid, 0);
  } catch (err) {
    // EPERM: it exists, under another user.
    if (errCode(err) !== "EPERM") return false;
  }
  const now = startTime(o.pid);
  if (o.start !== null && now !== null) return now === o.start;
  // Without start times, our own pid in the file is a previous incarnation (a restarted container).
  return o.pid !== process.pid;
}

function busy(dataDir: string, file: string, o: Owner): CliError {
  const where = o.host === hostname() ? "" : ` on host ${o.host}`;
  const hint = o.host === hostname() ? "" : ` (if it is no longer running there, delete ${file})`;
  return new CliError(
    EXIT.busy,
    `${o.command} (pid ${o.pid}${where}, since ${o.since}) is using the data directory ${dataDir}${hint}; ` +
      "stop it, or set DATABASE_URL to work on a PostgreSQL server instead",
  );
}

/** Run `fn` holding the takeover guard, or return false when another process holds it. */
function withGuard(guard: string, fn: () => void): boolean {
  try {
    writeFileSync(guard, String(process.pid), { flag: "wx" });
  } catch (err) {
    if (errCode(err) !== "EEXIST") throw err;
    try {
      if (Date.now() - statSync(guard).mtimeMs > GUARD_STALE_MS) unlinkSync(guard);
    } catch {
      // gone meanwhile
    }
    return false;
  }
  try {
    fn();
  } finally {
    try {
      unlinkSync(guard);
    } catch {
      // already gone
    }
  }
  return true;
}

/**
 * Lock `dataDir` (created if missing) for this process, or throw a CliError
 * (exit code 3) naming the process that holds it.
 */
export function lockDataDir(dataDir: string, command: string): DataDirLock {
  mkdirSync(dataDir, { recursive: true });
  const file = resolve(dataDir, LOCK_FILE);
  const me: Owner = {
    pid: process.pid,
    host: hostname(),
    start: startTime(process.pid),
    command,
    since: new Date().toISOString(),
    token: randomBytes(12).toString("hex"),
  };
  const tmp = `${file}.${process.pid}.${me.token}`;
  writeFileSync(tmp, JSON.stringify(me) + "\n", { mode: 0o644 });
  let acquired = false;
  try {
    for (let attempt = 0; attempt < 20 && !acquired; attempt++) {
      try {
        linkSync(tmp, file);
        acquired = true;
        break;
      } catch (err) {
        if (errCode(err) !== "EEXIST") throw err;
      }
      const owner = readOwner(file);
      if (owner === null) continue; // released meanwhile: try again
      if (owner !== "unreadable" && running(owner)) throw busy(dataDir, file, owner);
      // Stale: replace it, unless it changed since we read it (someone else took over first).
      withGuard(`${file}.takeover`, () => {
        const again = readOwner(file);
        const same =
          again === "unreadable"
            ? owner === "unreadable"
            : again !== null && owner !== "unreadable" && again.token === owner.token;
        if (!same) return;
        renameSync(tmp, file);
        acquired = true;
      });
    }
  } finally {
    try {
      unlinkSync(tmp);
    } catch {
      // renamed into place
    }
  }
  if (!acquired) {
    const owner = readOwner(file);
    if (owner !== null && owner !== "unreadable") throw busy(dataDir, file, owner);
    throw new CliError(EXIT.busy, `could not lock the data directory ${dataDir} (${file} keeps changing)`);
  }

  let released = false;
  const release = (): void => {
    if (released) return;
    released = true;
    process.removeListener("exit", release);
    const owner = readOwner(file);
    if (owner !== null && owner !== "unreadable" && owner.token === me.token) {
      try {
        unlinkSync(file);
      } catch {
        // already gone
      }
    }
  };
  // Also on exit paths that skip close (process.exit on a second signal, an uncaught error).
  process.on("exit", release);
  return { file, release };
}
