/**
 * Child-process entry for in-process measurements, so each system runs in a
 * fresh process of its own (DBOS is a per-process singleton; CPU and RSS are
 * then that system's alone):
 *
 *   node --import tsx bench/peers/entry.ts <system> '<JSON array of PeerOptions>'
 *
 * system: capstan | langgraph-sync | langgraph-async | dbos. Each options
 * object is one measurement (e.g. a concurrent one, then a sequential one),
 * run one after the other in this process. Prints one line
 * `BENCH_RESULT [results]` on success; exits non-zero on failure.
 */
import pg from "pg";
import type { PeerOptions, PeerResult } from "./common.js";

/*
 * Count SQL round trips and transactions on the client side: every system
 * here talks to PostgreSQL through this same node-postgres module (one
 * deduplicated copy), and every statement, BEGIN and COMMIT included, is one
 * `Client.prototype.query` call. A transaction is a COMMIT/ROLLBACK, or a
 * statement sent outside BEGIN … COMMIT (autocommit).
 */
let statements = 0;
let transactions = 0;
const inTx = new WeakSet<object>();
const proto = pg.Client.prototype as unknown as { query: (...args: unknown[]) => unknown };
const originalQuery = proto.query;
proto.query = function (this: object, ...args: unknown[]): unknown {
  statements++;
  const first = args[0];
  const text = (
    typeof first === "string"
      ? first
      : typeof first === "object" && first !== null && typeof (first as { text?: unknown }).text === "string"
        ? (first as { text: string }).text
        : ""
  )
    .trim()
    .toUpperCase();
  if (text.startsWith("BEGIN") || text.startsWith("START TRANSACTION")) inTx.add(this);
  else if (text.startsWith("COMMIT") || text.startsWith("ROLLBACK") || text.startsWith("END")) {
    inTx.delete(this);
    transactions++;
  } else if (!inTx.has(this)) transactions++;
  return originalQuery.apply(this, args);
};

export const SYSTEMS = ["capstan", "langgraph-sync", "langgraph-async", "dbos"] as const;
export type System = (typeof SYSTEMS)[number];

export type EntryOptions = PeerOptions & { redisUrl?: string; redisPrefix?: string };

async function measure(system: System, opts: EntryOptions): Promise<PeerResult> {
  switch (system) {
    case "langgraph-sync":
    case "langgraph-async": {
      const { runLangGraph } = await import("./langgraph.js");
      return runLangGraph({ ...opts, durability: system === "langgraph-sync" ? "sync" : "async" });
    }
    case "dbos": {
      const { runDbos } = await import("./dbos.js");
      return runDbos(opts);
    }
    case "capstan": {
      const { runCapstanInProcess } = await import("./capstan-inproc.js");
      return runCapstanInProcess({
        ...opts,
        redisUrl: opts.redisUrl ?? "redis://127.0.0.1:6379",
        redisPrefix: opts.redisPrefix ?? `capstan_bench_${process.pid}:`,
      });
    }
  }
}

/** Commits of the database, read at the window edges (stats lag ≤ 1 s in steady state). */
async function withCommitCounter(
  opts: EntryOptions,
  fn: (o: EntryOptions) => Promise<PeerResult>,
): Promise<PeerResult> {
  const client = new pg.Client({ connectionString: opts.databaseUrl, application_name: "bench-stats" });
  await client.connect();
  const reads: Array<Promise<number>> = [];
  const stmts: number[] = [];
  const txs: number[] = [];
  const read = async (): Promise<number> => {
    const r = await client.query<{ c: string }>(
      "SELECT xact_commit::text AS c FROM pg_stat_database WHERE datname = current_database()",
    );
    return Number(r.rows[0]?.c ?? Number.NaN);
  };
  try {
    const result = await fn({
      ...opts,
      onWindow: () => {
        stmts.push(statements);
        txs.push(transactions);
        reads.push(read());
      },
    });
    if (reads.length === 2 && result.runs > 0) {
      const [a, b] = await Promise.all(reads);
      // Minus the reads of the counter itself.
      result.commitsPerRun = (b! - a! - 1) / result.runs;
      result.statementsPerRun = (stmts[1]! - stmts[0]! - 1) / result.runs;
      result.transactionsPerRun = (txs[1]! - txs[0]! - 1) / result.runs;
    }
    return result;
  } finally {
    await client.end().catch(() => {});
  }
}

const [system, json] = process.argv.slice(2);
if (!system || !SYSTEMS.includes(system as System) || !json) {
  process.stderr.write(`usage: entry.ts <${SYSTEMS.join("|")}> '<JSON array of options>'\n`);
  process.exit(2);
}
const hardStop = setTimeout(
  () => {
    process.stderr.write("in-process measurement exceeded its time limit\n");
    process.exit(3);
  },
  Number(process.env.BENCH_CHILD_TIMEOUT_MS ?? 180_000),
);
hardStop.unref();

(async () => {
  const all = JSON.parse(json) as EntryOptions[];
  const results: PeerResult[] = [];
  for (const opts of all) results.push(await withCommitCounter(opts, (o) => measure(system as System, o)));
  return results;
})()
  .then((r) => {
    process.stdout.write(`BENCH_RESULT ${JSON.stringify(r)}\n`);
    process.exit(0);
  })
  .catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
