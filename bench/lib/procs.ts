/**
 * Child processes of the benchmark: Capstan roles started from source
 * (`node --import tsx src/cli/main.ts …`, as the crash tests do) and the
 * in-process measurements. Every child is registered so that it is killed
 * on any exit path (normal end, error, Ctrl-C); CPU and RSS are read from
 * /proc.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync, readdirSync } from "node:fs";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));

export interface Proc {
  name: string;
  child: ChildProcess;
  pid: number;
  /** The last ~200 kB the process wrote (for failure messages). */
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  alive(): boolean;
  signal(sig: NodeJS.Signals): void;
}

const live = new Set<Proc>();

/** SIGKILL every child still running (synchronous: usable from an `exit` handler). */
export function killAllNow(): void {
  for (const p of live) {
    try {
      p.child.kill("SIGCONT");
      p.child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
}

/** SIGKILL the given children and wait until they are gone. */
export async function killProcs(procs: Proc[]): Promise<void> {
  for (const p of procs) {
    p.signal("SIGCONT");
    p.signal("SIGKILL");
  }
  await Promise.all(procs.map((p) => p.exited));
}

/** `node --import tsx <args>` (from source), or plain `node <args>` with `tsx: false` (built code). */
export function spawnNode(
  name: string,
  args: string[],
  env: Record<string, string | undefined>,
  opts: { tsx?: boolean } = {},
): Proc {
  const child = spawn(process.execPath, [...(opts.tsx === false ? [] : ["--import", "tsx"]), ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const keep = (d: Buffer): void => {
    out += d.toString();
    if (out.length > 200_000) out = out.slice(-100_000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  let exitedNow = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => {
      exitedNow = true;
      live.delete(proc);
      resolve({ code, signal });
    }),
  );
  child.on("error", () => {});
  const proc: Proc = {
    name,
    child,
    pid: child.pid ?? -1,
    output: () => out,
    exited,
    alive: () => !exitedNow && child.exitCode === null && child.signalCode === null,
    signal(sig) {
      if (proc.alive()) child.kill(sig);
    },
  };
  live.add(proc);
  return proc;
}

/** `capstan <args>` from source with the benchmark agent config. */
export function spawnCapstan(name: string, args: string[], env: Record<string, string | undefined>): Proc {
  return spawnNode(name, ["src/cli/main.ts", "--config", "bench/capstan.bench.config.ts", ...args], env);
}

/** A TCP port that was free a moment ago. */
export function freePort(): Promise<number> {
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

/** Wait until GET url answers 200 (or the process dies, or the time is up), asking every `everyMs`. */
export async function waitReady(url: string, proc: Proc, timeoutMs = 60_000, everyMs = 100): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (!proc.alive())
      throw new Error(`${proc.name} exited before it was ready:\n${proc.output().slice(-4000)}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(2_000) });
      await res.body?.cancel();
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      throw new Error(
        `${proc.name} was not ready at ${url} after ${timeoutMs} ms:\n${proc.output().slice(-4000)}`,
      );
    }
    await sleep(everyMs);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/* ------------------------------- /proc ------------------------------- */

const TICK_MS = 10; // CLK_TCK is 100 on Linux

/** CPU time (user + system, ms) of a process, or NaN when it is gone. */
export function cpuMsOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may contain spaces) start at ") ".
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(rest[11]) + Number(rest[12])) * TICK_MS;
  } catch {
    return Number.NaN;
  }
}

/** Resident set size (MiB) of a process, or NaN when it is gone. */
export function rssMiBOf(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const m = /VmRSS:\s+(\d+) kB/.exec(status);
    return m ? Number(m[1]) / 1024 : Number.NaN;
  } catch {
    return Number.NaN;
  }
}

/** Pids of processes whose command name is `comm` (e.g. "postgres", "redis-server"). */
export function pidsByComm(comm: string): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/comm`, "utf8").trim() === comm) out.push(Number(d));
    } catch {
      // raced with its exit
    }
  }
  return out;
}

/** Busy and total CPU time of the whole machine (ms, all cores). */
export function machineCpuMs(): { busy: number; total: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0]!;
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.reduce((a, b) => a + b, 0) * TICK_MS;
  const idle = ((v[3] ?? 0) + (v[4] ?? 0)) * TICK_MS;
  return { busy: total - idle, total };
}

export interface CpuGroups {
  [group: string]: number[];
}

/** CPU ms per group of pids (pids that vanished count as their last known value). */
export function cpuSnapshot(groups: CpuGroups): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [g, pids] of Object.entries(groups)) {
    out[g] = pids.reduce((sum, pid) => {
      const v = cpuMsOf(pid);
      return Number.isNaN(v) ? sum : sum + v;
    }, 0);
  }
  return out;
}
