/**
 * Private PostgreSQL and Redis instances for tests that must restart or flush
 * them (the chaos suite). The machine's shared servers (5432, 6379) are used
 * by other test files running in parallel and are never touched here.
 *
 * - PostgreSQL: a throwaway cluster from the Debian binaries (initdb, pg_ctl)
 *   in a temp dir, on a random port, `fsync=off`. initdb refuses to run as
 *   root, so as root the cluster belongs to the `postgres` user and every
 *   command runs through `runuser -u postgres --`.
 * - Redis: `redis-server` as a child process on a random port, no persistence.
 *
 * Restart = stop + start on the same port (and data dir). Both are stopped and
 * their files removed by `close()`, and (best effort) when the process exits.
 */
import { execFile, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/* ------------------------------- PostgreSQL ------------------------------ */

export interface PrivatePostgres {
  readonly port: number;
  readonly dir: string;
  readonly up: boolean;
  /** URL of a database on this server (default `postgres`). */
  url(database?: string): string;
  /** `immediate` is a crash (recovery at next start); `fast` a clean shutdown. */
  stop(mode?: "fast" | "immediate"): Promise<void>;
  start(): Promise<void>;
  restart(mode?: "fast" | "immediate"): Promise<void>;
  /** The tail of the server log. */
  log(tailChars?: number): string;
  /** ERROR/FATAL/PANIC entries of the server log with their DETAIL/STATEMENT lines (bounded). */
  errors(maxLines?: number): string;
  /** Stop for good and remove the data directory. Idempotent. */
  close(): Promise<void>;
}

/** The directory of initdb/pg_ctl: $PG_BINDIR, the newest /usr/lib/postgresql/N/bin, or PATH. */
export function postgresBinDir(): string | undefined {
  if (process.env.PG_BINDIR) return process.env.PG_BINDIR;
  const base = "/usr/lib/postgresql";
  if (existsSync(base)) {
    const versions = readdirSync(base)
      .filter((v) => existsSync(join(base, v, "bin", "initdb")))
      .sort((a, b) => Number(b) - Number(a));
    if (versions[0]) return join(base, versions[0], "bin");
  }
  return undefined;
}

/** uid/gid of a user, from /etc/passwd. */
function userIds(name: string): { uid: number; gid: number } | undefined {
  try {
    for (const line of readFileSync("/etc/passwd", "utf8").split("\n")) {
      const f = line.split(":");
      if (f[0] === name && f[2] && f[3]) return { uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch {
    // no passwd file
  }
  return undefined;
}

export async function startPrivatePostgres(
  opts: { settings?: Record<string, string> } = {},
): Promise<PrivatePostgres> {
  const bin = postgresBinDir();
  const exe = (name: string) => (bin ? join(bin, name) : name);
  const isRoot = process.getuid?.() === 0;
  const owner = isRoot ? userIds("postgres") : undefined;
  if (isRoot && !owner) {
    throw new Error("running as root and there is no `postgres` user: initdb refuses to run as root");
  }
  // As root, run as `postgres`; otherwise as ourselves.
  const cmd = (name: string, args: string[]): [string, string[]] =>
    isRoot ? ["runuser", ["-u", "postgres", "--", exe(name), ...args]] : [exe(name), args];

  const dir = mkdtempSync(join(tmpdir(), "capstan-pg-"));
  if (owner) chownSync(dir, owner.uid, owner.gid);
  const data = join(dir, "data");
  const logFile = join(dir, "postgres.log");
  const port = await freePort();
  let up = false;
  let closed = false;

  const settings: Record<string, string> = {
    listen_addresses: "127.0.0.1",
    // fsync=off is safe for a crash of PostgreSQL alone (`pg_ctl stop -m immediate`): what it
    // wrote is in the OS page cache. synchronous_commit must stay on, or an acknowledged
    // commit may still sit in the WAL buffers when the server is killed, and be lost.
    fsync: "off",
    full_page_writes: "off",
    log_lock_waits: "on",
    deadlock_timeout: "200ms",
    max_connections: "300",
    shared_buffers: "64MB",
    ...opts.settings,
  };
  const serverOpts = [
    `-p ${port}`,
    `-k ${dir}`,
    ...Object.entries(settings).map(([k, v]) => `-c ${k}=${v}`),
  ].join(" ");

  const exec = async (name: string, args: string[], timeout = 60_000): Promise<void> => {
    const [file, argv] = cmd(name, args);
    try {
      await run(file, argv, { timeout, cwd: dir });
    } catch (err) {
      const e = err as { stderr?: string; stdout?: string; message: string };
      throw new Error(
        `${name} ${args.join(" ")} failed: ${e.message}\n${e.stderr ?? ""}${e.stdout ?? ""}\n${tailOf(logFile, 2_000)}`,
        { cause: err },
      );
    }
  };

  const cleanupSync = () => {
    if (up) {
      const [file, argv] = cmd("pg_ctl", ["-D", data, "-m", "immediate", "-w", "-t", "10", "stop"]);
      spawnSync(file, argv, { stdio: "ignore", timeout: 15_000 });
      up = false;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  process.once("exit", cleanupSync);

  const start = async () => {
    if (up) return;
    await exec("pg_ctl", ["-D", data, "-l", logFile, "-w", "-t", "60", "-o", serverOpts, "start"]);
    up = true;
  };
  const stop = async (mode: "fast" | "immediate" = "fast") => {
    if (!up) return;
    await exec("pg_ctl", ["-D", data, "-m", mode, "-w", "-t", "60", "stop"]);
    up = false;
  };

  try {
    await exec("initdb", [
      "-D",
      data,
      "-U",
      "postgres",
      "--auth=trust",
      "-E",
      "UTF8",
      "--locale=C",
      "--no-sync",
    ]);
    await start();
  } catch (err) {
    process.removeListener("exit", cleanupSync);
    cleanupSync();
    throw err;
  }

  return {
    port,
    dir,
    get up() {
      return up;
    },
    url: (database = "postgres") => `postgres://postgres@127.0.0.1:${port}/${database}`,
    stop,
    start,
    async restart(mode = "immediate") {
      await stop(mode);
      await start();
    },
    log: (tailChars = 4_000) => tailOf(logFile, tailChars),
    errors: (maxLines = 60) => {
      let text: string;
      try {
        text = readFileSync(logFile, "utf8");
      } catch {
        return "";
      }
      const out: string[] = [];
      let inEntry = false;
      for (const line of text.split("\n")) {
        if (/\b(ERROR|FATAL|PANIC):/.test(line)) inEntry = true;
        else if (!/^\s|\b(DETAIL|HINT|CONTEXT|STATEMENT):/.test(line)) inEntry = false;
        if (inEntry) out.push(line);
        if (out.length >= maxLines) break;
      }
      return out.join("\n");
    },
    async close() {
      if (closed) return;
      closed = true;
      try {
        await stop("immediate");
      } finally {
        process.removeListener("exit", cleanupSync);
        cleanupSync();
      }
    },
  };
}

function tailOf(file: string, chars: number): string {
  try {
    const s = readFileSync(file, "utf8");
    return s.slice(-chars);
  } catch {
    return "";
  }
}

/* --------------------------------- Redis --------------------------------- */

export interface PrivateRedis {
  readonly port: number;
  readonly url: string;
  readonly up: boolean;
  /** Kill the server (SIGKILL by default: nothing is saved anyway). */
  stop(signal?: NodeJS.Signals): Promise<void>;
  start(): Promise<void>;
  /** Stop + start on the same port: every key is gone (no persistence). */
  restart(): Promise<void>;
  /** FLUSHALL on this instance only. */
  flushAll(): Promise<void>;
  /** The tail of the server's output. */
  output(tailChars?: number): string;
  close(): Promise<void>;
}

/** Send one inline command over RESP and return the first reply line. */
export function redisCommand(port: number, command: string, timeoutMs = 2_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: "127.0.0.1", port });
    let buf = "";
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`redis ${command}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    s.on("connect", () => s.write(`${command}\r\n`));
    s.on("data", (d: Buffer) => {
      buf += d.toString();
      const i = buf.indexOf("\r\n");
      if (i >= 0) {
        clearTimeout(timer);
        s.end();
        resolve(buf.slice(0, i));
      }
    });
    s.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

export async function startPrivateRedis(opts: { binary?: string } = {}): Promise<PrivateRedis> {
  const binary = opts.binary ?? process.env.REDIS_SERVER ?? "redis-server";
  const port = await freePort();
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let out = "";
  let closed = false;

  const killSync = () => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  process.once("exit", killSync);

  const start = async () => {
    if (child && child.exitCode === null && child.signalCode === null) return;
    const c = spawn(
      binary,
      [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    child = c;
    const keep = (d: Buffer) => {
      out += d.toString();
      if (out.length > 100_000) out = out.slice(-50_000);
    };
    c.stdout?.on("data", keep);
    c.stderr?.on("data", keep);
    exited = new Promise<void>((r) => c.once("exit", () => r()));
    const spawnError = new Promise<never>((_, reject) => c.once("error", reject));
    spawnError.catch(() => {});
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (c.exitCode !== null || c.signalCode !== null) {
        throw new Error(`redis-server exited at start:\n${out.slice(-2_000)}`);
      }
      const pong = await Promise.race([redisCommand(port, "PING", 500).catch(() => ""), spawnError]);
      if (pong === "+PONG") return;
      if (Date.now() > deadline) throw new Error(`redis-server did not answer PING:\n${out.slice(-2_000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  const stop = async (signal: NodeJS.Signals = "SIGKILL") => {
    if (child && child.exitCode === null && child.signalCode === null) {
      child.kill(signal);
      await exited;
    }
  };

  try {
    await start();
  } catch (err) {
    killSync();
    process.removeListener("exit", killSync);
    throw err;
  }

  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    get up() {
      return child !== undefined && child.exitCode === null && child.signalCode === null;
    },
    stop,
    start,
    async restart() {
      await stop();
      await start();
    },
    async flushAll() {
      const r = await redisCommand(port, "FLUSHALL");
      if (r !== "+OK") throw new Error(`FLUSHALL answered ${r}`);
    },
    output: (tailChars = 4_000) => out.slice(-tailChars),
    async close() {
      if (closed) return;
      closed = true;
      await stop();
      process.removeListener("exit", killSync);
    },
  };
}
