import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));

export interface Proc {
  child: ChildProcess;
  /** Everything the process wrote, both streams interleaved (for failure messages). */
  output: () => string;
  /** What it wrote to stdout alone (data), and to stderr alone (logs, errors). */
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(signal?: NodeJS.Signals): void;
}

/** Run the CLI from source as a real child process. */
export function spawnCapstan(args: string[], env: Record<string, string | undefined>): Proc {
  const child = spawn(process.execPath, ["--import", "tsx", "src/cli/main.ts", ...args], {
    cwd: ROOT,
    // Ops port 0: many workers run at once in tests; each binds a free port.
    env: {
      PATH: process.env.PATH,
      HOME: process.env.HOME,
      CAPSTAN_LOG_LEVEL: "warn",
      CAPSTAN_OPS_PORT: "0",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  const streams = { stdout: "", stderr: "" };
  const keep = (which: keyof typeof streams) => (d: Buffer) => {
    out += d.toString();
    if (out.length > 200_000) out = out.slice(-100_000);
    streams[which] += d.toString();
    if (streams[which].length > 200_000) streams[which] = streams[which].slice(-100_000);
  };
  child.stdout?.on("data", keep("stdout"));
  child.stderr?.on("data", keep("stderr"));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on("exit", (code, signal) => resolve({ code, signal })),
  );
  return {
    child,
    output: () => out,
    stdout: () => streams.stdout,
    stderr: () => streams.stderr,
    exited,
    kill: (signal = "SIGKILL") => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
  };
}

/** Kill every process still running (test cleanup). */
export async function killAll(procs: Proc[]): Promise<void> {
  for (const p of procs) {
    p.kill("SIGCONT");
    p.kill("SIGKILL");
  }
  await Promise.all(procs.map((p) => p.exited));
}
