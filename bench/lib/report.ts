/**
 * Renders the figures of a run into bench/README.md, between the markers
 * `<!-- bench:results:start -->` and `<!-- bench:results:end -->`; the rest
 * of the README (method, analysis) is left as written.
 */
import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import * as prettier from "prettier";
import type { Results, ThroughputRow } from "../run.js";
import type { PeerResult } from "../peers/common.js";
import type { Summary } from "./stats.js";

const START = "<!-- bench:results:start -->";
const END = "<!-- bench:results:end -->";

function n(v: number | undefined, digits = 1): string {
  if (v === undefined || !Number.isFinite(v)) return "–";
  if (Math.abs(v) >= 100) return Math.round(v).toLocaleString("en-US");
  return v.toFixed(digits);
}

/** "median / p99 ms" */
function lat(s: Summary | undefined): string {
  if (!s || s.n === 0) return "–";
  return `${n(s.median)} / ${n(s.p99)} ms`;
}

function ratio(a: number | undefined, b: number | undefined, digits = 2): string {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return "–";
  return `${(a / b).toFixed(digits)}×`;
}

const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

function table(head: string[], rows: string[][]): string {
  return [
    `| ${head.join(" | ")} |`,
    `| ${head.map(() => "---").join(" | ")} |`,
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ].join("\n");
}

function cpuCell(r: ThroughputRow): string {
  const c = r.cpu?.msPerRun;
  if (!c) return "–";
  return `${n(c.total)} (ingress ${n(c.ingress)}, workers ${n(c.workers)}, PG ${n(c.postgres)}, Redis ${n(c.redis)}, client ${n(c.benchClient)})`;
}

export function renderFigures(r: Results, file: string): string {
  const out: string[] = [];
  const m = r.machine;
  const base = r.baseline?.insert;
  out.push(
    `Run of ${r.when.slice(0, 16).replace("T", " ")} UTC, ${n(r.durationSeconds, 0)} s wall time for \`npm run bench\`; raw results: [\`${file}\`](${file.replace(/^bench\//, "")}).`,
  );
  out.push("");
  out.push("### Machine");
  out.push("");
  out.push(
    table(
      ["", ""],
      [
        ["cores", `${m.cpus} × ${m.cpuModel}`],
        ["memory", `${m.memoryGiB} GiB`],
        ["OS", m.os],
        ["Node", m.node],
        [
          "PostgreSQL",
          `${m.postgres} (local; synchronous_commit=${m.postgresSettings.synchronous_commit}, fsync=${m.postgresSettings.fsync}, shared_buffers=${m.postgresSettings.shared_buffers})`,
        ],
        ["Redis", `${m.redis} (local)`],
        [
          "code measured",
          `commit ${r.code.commit}${
            r.code.uncommittedSrcFiles.length
              ? ` plus uncommitted changes in ${r.code.uncommittedSrcFiles.length} files under src/ (the working tree is shared; listed in the results file)`
              : ""
          }`,
        ],
        [
          "load before the run",
          `load average ${m.loadAverageAtStart.join(", ")}; CPU busy ${n(m.busyPctBeforeStart)} % over 3 s (after waiting ${n(m.waitedForQuietSeconds, 0)} s for other work to quieten); the machine is shared, so each table row also gives the CPU share used by other processes during its window`,
        ],
      ],
    ),
  );
  out.push("");

  out.push("### Summary");
  out.push("");
  const rows: string[][] = [];
  if (base) {
    rows.push([
      `PostgreSQL raw small transactions, node-postgres, ${base.clients} connections (BEGIN; INSERT one row; COMMIT)`,
      `**${n(base.txPerSec, 0)} tx/s**`,
      `latency ${lat(base.latencyMs)}; UPDATE-one-row variant ${n(r.baseline?.update.txPerSec, 0)} tx/s`,
    ]);
  }
  for (const t of r.throughput ?? []) {
    rows.push([
      `Capstan, 1 ingress + ${t.workers} worker${t.workers > 1 ? "s" : ""} (HTTP + SSE, zero-delay model, ${t.concurrency} conversations in flight)`,
      `**${n(t.runsPerSec)} runs/s, ${n(t.stepsPerSec)} steps/s**`,
      `runs/s ÷ baseline tx/s = ${ratio(t.runsPerSec, base?.txPerSec, 4)}; ${n(t.cpu?.commitsPerRun)} commits/run → ${n(t.cpu?.commitsPerSec, 0)} commits/s = ${ratio(t.cpu?.commitsPerSec, base?.txPerSec)} of baseline; machine CPU ${n(t.cpu?.machineBusyPct)} % busy`,
    ]);
  }
  const l = r.light;
  if (l) {
    rows.push([
      "Orchestration overhead per step (1 worker, one run at a time, zero-delay model, trivial tools; claim → finish ÷ steps)",
      `**${lat(l.overheadPerStepMs)}**`,
      `includes the model client: one zero-delay scripted call through AI SDK \`streamText\` costs ${lat(l.modelClientCallMs)} (×${r.workload.llmStepsPerRun} per run)`,
    ]);
    rows.push([
      "Pickup latency, light load (POST 202 → `run.started` on SSE)",
      `**${lat(l.pickupMs)}**`,
      `${l.runs} runs, one at a time`,
    ]);
    rows.push([
      "SSE delivery latency, light load (event persisted → received)",
      `**${lat(l.sseDeliveryMs)}**`,
      `${l.sseDeliveryMs.n} live events`,
    ]);
  }
  const sat = r.throughput?.at(-1);
  if (sat) {
    rows.push([
      `Pickup latency at saturation (1 ingress + ${sat.workers} workers, ${sat.concurrency} in flight)`,
      lat(sat.pickupMs),
      "includes queueing behind the runs in flight",
    ]);
    rows.push([
      `SSE delivery latency at saturation (same)`,
      lat(sat.sseDeliveryMs),
      `${sat.sseDeliveryMs.n} live events`,
    ]);
  }
  const rec = r.recovery;
  if (rec) {
    rows.push([
      `Recovery after \`SIGKILL\` of a worker (lease ${rec.leaseMs} ms, heartbeat ${rec.heartbeatMs} ms, reclaim sweep ${rec.reclaimSweepMs} ms)`,
      `**${lat(rec.sigkill.recoveryMs)}**`,
      `signal → \`run.started\` from the other worker on SSE; ${rec.sigkill.recovered}/${rec.sigkill.runs} runs over ${rec.sigkill.trials} kills, ${rec.sigkill.succeeded} succeeded; bound ≈ lease + sweep`,
    ]);
    rows.push([
      `Recovery after \`SIGTERM\` hand-off (grace ${rec.sigterm.graceMs} ms: runs hand off at their next step boundary; model ${rec.modelDelayMs} ms per call)`,
      `**${lat(rec.sigterm.recoveryMs)}**`,
      `${rec.sigterm.recovered}/${rec.sigterm.runs} runs over ${rec.sigterm.trials} trials, ${rec.sigterm.succeeded} succeeded`,
    ]);
    rows.push([
      "Recovery after `SIGTERM` with grace 0 (leases released at once, the model call in flight is re-issued)",
      `**${lat(rec.sigtermGrace0.recoveryMs)}**`,
      `${rec.sigtermGrace0.recovered}/${rec.sigtermGrace0.runs} runs, ${rec.sigtermGrace0.succeeded} succeeded`,
    ]);
  }
  const cold = r.coldStart;
  if (cold) {
    const cs = (v: typeof cold.tsx): string => `${lat(v.readyMs)} (CPU ${n(v.cpuMs.median)} ms)`;
    rows.push([
      "Worker cold start: spawn → `/readyz` 200, production path (`node bin/capstan.js worker`), `.mjs` / `.ts` config",
      `**${lat(cold.productionJs.readyMs)}** / ${lat(cold.productionTs.readyMs)}`,
      `CPU at ready ${n(cold.productionJs.cpuMs.median)} / ${n(cold.productionTs.cpuMs.median)} ms (less sensitive to the machine's load than wall time); from source with tsx: ${cs(cold.tsx)}; ${cold.samplesPerVariant} starts each, machine ${n(cold.machineBusyPctBefore, 0)} % busy before, an empty \`node -e ""\` took ${n(cold.emptyNodeMs.median)} ms`,
    ]);
  }
  const mem = r.memory;
  if (mem) {
    const h = mem.hold;
    const f = mem.flow;
    const failedNote = (x: typeof h): string => {
      const failed = x.statusesAtEnd.failed;
      return failed === undefined ? "" : `; **failed runs: ${String(failed)}**`;
    };
    rows.push([
      `Memory per in-flight run: ${n(h.peakInFlight, 0)} runs in flight at once, each waiting on its model call (${h.workers} worker processes, concurrency ${h.workerConcurrency} each)`,
      `**${n(h.kibPerInFlightRun)} KiB** RSS (V8 heap ${n(h.heapKibPerInFlightRun)} KiB)`,
      `(worker RSS ${n(sum(h.rssAtPeakMiB))} MiB − idle ${n(sum(h.idleRssMiB))} MiB) ÷ ${n(h.peakInFlight, 0)}; all claimed ${n(h.secondsToPeak)} s after release; model call ${n(h.modelDelayMs / 1000, 0)} s so that none finishes first${failedNote(h)}`,
    ]);
    rows.push([
      `Same with the ${f.modelDelayMs} ms model (${n(f.runs, 0)} runs released at once)`,
      `**${n(f.kibPerInFlightRun)} KiB** RSS (heap ${n(f.heapKibPerInFlightRun)} KiB)`,
      `peak ${n(f.peakInFlight, 0)} in flight after ${n(f.secondsToPeak)} s (runs finish after ≥ 3 s, so the claim rate bounds how many are in flight at once); RSS ${n(sum(f.rssAtPeakMiB))} MiB − idle ${n(sum(f.idleRssMiB))} MiB (RSS also holds garbage of the runs that finished)${failedNote(f)}`,
    ]);
  }
  if (r.scaling?.length) {
    const one = r.scaling[0]!.runsPerSec;
    rows.push([
      `Scaling with a ${r.scaling[0]!.modelDelayMs} ms model: runs/s with ${r.scaling.map((s) => s.workers).join(", ")} workers`,
      `**${r.scaling.map((s) => n(s.runsPerSec)).join(" / ")}**`,
      `speed-up ${r.scaling.map((s) => ratio(s.runsPerSec, one)).join(" / ")}; ${r.scaling[0]!.concurrency} conversations in flight; worker concurrency 50`,
    ]);
  }
  const peers = r.peers?.systems;
  const cap = peers?.capstan && "concurrent" in peers.capstan ? peers.capstan.concurrent : undefined;
  for (const [name, p] of Object.entries(peers ?? {})) {
    if (name === "capstan") continue;
    if ("error" in p) {
      rows.push([
        `Peer ${name}`,
        "could not run",
        p.error.slice(0, 300).replace(/\|/g, "\\|").replace(/\n/g, " "),
      ]);
      continue;
    }
    rows.push([
      `Capstan ÷ ${label(name)} (in-process, ${r.peers!.concurrency} conversations in flight)`,
      `**${ratio(cap?.runsPerSec, p.concurrent.runsPerSec)}**`,
      `${n(cap?.runsPerSec)} vs ${n(p.concurrent.runsPerSec)} runs/s; multi-process Capstan (1 ingress + 1 worker, HTTP + SSE) ÷ peer = ${ratio(r.throughput?.[0]?.runsPerSec, p.concurrent.runsPerSec)}`,
    ]);
  }
  out.push(table(["figure", "value (median / p99)", "notes"], rows));
  out.push("");

  if (r.throughput?.length || r.scaling?.length) {
    out.push(
      "### Capstan, multi-process (1 ingress + N workers, runs created over HTTP, every run followed over SSE)",
    );
    out.push("");
    const tr = (t: ThroughputRow): string[] => [
      `${t.workers}`,
      `${t.modelDelayMs} ms`,
      `${t.concurrency}`,
      n(t.runsPerSec),
      n(t.stepsPerSec),
      ratio(t.runsPerSec, base?.txPerSec, 4),
      lat(t.runLatencyMs),
      lat(t.pickupMs),
      lat(t.sseDeliveryMs),
      n(t.cpu?.commitsPerRun),
      cpuCell(t),
      `${n(t.cpu?.machineBusyPct)} % (others ${n(t.cpu?.otherBusyPct)} %)`,
      `${t.failed}`,
    ];
    out.push(
      table(
        [
          "workers",
          "model",
          "in flight",
          "runs/s",
          "steps/s",
          "runs/s ÷ PG tx/s",
          "run latency",
          "pickup",
          "SSE delivery",
          "PG commits / run",
          "CPU ms / run",
          "machine CPU busy",
          "failed",
        ],
        [...(r.throughput ?? []), ...(r.scaling ?? [])].map(tr),
      ),
    );
    out.push("");
    out.push(
      "PG commits / run: every transaction of the run's database per run in the window (`pg_stat_database`; single-statement reads, the ingress's and autovacuum's included). CPU ms / run: from `/proc`, PG = the backends serving this database.",
    );
    out.push("");
  }

  if (peers) {
    out.push(
      `### In-process comparison (same workload, zero-delay model, pool of ${r.settings.poolSizePerProcess} connections each)`,
    );
    out.push("");
    const pr = (name: string, c: PeerResult, s: PeerResult, rounds: number[], busy: number): string[] => [
      label(name),
      `**${n(c.runsPerSec)}**${rounds.length > 1 ? ` (rounds: ${rounds.map((x) => n(x)).join(", ")})` : ""}`,
      n(c.stepsPerSec),
      name === "capstan" ? "1.00×" : ratio(cap?.runsPerSec, c.runsPerSec),
      lat(c.runLatency),
      lat(s.perStep),
      n(c.statementsPerRun),
      n(c.transactionsPerRun),
      n(c.cpuMsPerRun),
      n(c.maxRssMiB, 0),
      `${n(busy)} %`,
      `${c.errors + s.errors}`,
    ];
    const prow: string[][] = [];
    for (const [name, p] of Object.entries(peers)) {
      if ("error" in p)
        prow.push([
          label(name),
          "error",
          "",
          "",
          "",
          "",
          "",
          "",
          "",
          "",
          "",
          p.error.slice(0, 120).replace(/\|/g, "\\|").replace(/\n/g, " "),
        ]);
      else prow.push(pr(name, p.concurrent, p.sequential, p.rounds, p.machineBusyPct));
    }
    out.push(
      table(
        [
          "system",
          "runs/s",
          "steps/s",
          "Capstan ÷ this",
          `run latency (${r.peers!.concurrency} in flight)`,
          "per step, one run at a time",
          "SQL statements / run",
          "transactions / run",
          "CPU ms / run (its process)",
          "peak RSS MiB",
          "machine CPU busy (whole measurement)",
          "errors",
        ],
        prow,
      ),
    );
    out.push("");
  }
  if (Object.keys(r.failures).length > 0) {
    out.push("### Phases that failed in this run");
    out.push("");
    for (const [k, v] of Object.entries(r.failures))
      out.push(`- ${k}: ${v.replace(/\n/g, " ").slice(0, 400)}`);
    out.push("");
  }
  return out.join("\n");
}

function label(system: string): string {
  switch (system) {
    case "capstan":
      return "Capstan (worker in-process, runs enqueued directly)";
    case "langgraph-sync":
      return 'LangGraph.js + PostgresSaver (durability "sync")';
    case "langgraph-async":
      return 'LangGraph.js + PostgresSaver (durability "async", its default)';
    case "dbos":
      return "DBOS Transact";
    default:
      return system;
  }
}

const SKELETON = `# Benchmarks

${START}
${END}
`;

export async function renderReadme(path: string, results: Results, file: string): Promise<void> {
  const current = existsSync(path) ? await readFile(path, "utf8") : SKELETON;
  const text = current.includes(START) && current.includes(END) ? current : current + "\n" + SKELETON;
  const before = text.slice(0, text.indexOf(START) + START.length);
  const after = text.slice(text.indexOf(END));
  const text2 = `${before}\n\n${renderFigures(results, file)}\n${after}`;
  // Formatted like the rest of the repository (`prettier --check .` stays green).
  const options = (await prettier.resolveConfig(path)) ?? {};
  await writeFile(path, await prettier.format(text2, { ...options, filepath: path }));
}
