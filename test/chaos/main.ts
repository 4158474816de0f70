/**
 * `npm run chaos`: the long chaos run (about 4–5 minutes). Options:
 *   --seed N         reproduce a fault schedule (default: $CHAOS_SEED or random)
 *   --load-s S       how long new runs start and faults are injected (default 240)
 *   --threads N      conversations at once (default 80)
 *   --turns N        turns per conversation (default 45)
 *   --workers M --ingress N
 *   --api-keys K     API keys the conversations share (default 4; the rate limit is per key)
 * Exit code 0 when every check passed, 1 otherwise (with the debug dump).
 */
import { parseArgs } from "node:util";
import { ChaosSession, chaosSeed, LONG, type ChaosOptions } from "./chaos.js";

const USAGE = `npm run chaos -- [options]: the long chaos run (about 4-5 minutes)
  --seed N         reproduce a fault schedule (default: $CHAOS_SEED or random)
  --load-s S       how long new runs start and faults are injected (default ${LONG.loadMs / 1000})
  --threads N      conversations at once (default ${LONG.threads})
  --turns N        turns per conversation (default ${LONG.turnsPerThread})
  --workers M      worker processes (default ${LONG.workers})
  --ingress N      ingress processes (default ${LONG.ingress})
  --api-keys K     API keys the conversations share (default ${LONG.apiKeys}; the rate limit is per key)
Exit code 0 when every check passed, 1 otherwise (with the debug dump).
`;

const { values } = parseArgs({
  options: {
    seed: { type: "string" },
    "load-s": { type: "string" },
    threads: { type: "string" },
    turns: { type: "string" },
    workers: { type: "string" },
    ingress: { type: "string" },
    "api-keys": { type: "string" },
    help: { type: "boolean", short: "h" },
  },
});
if (values.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
const num = (v: string | undefined, d: number) => (v !== undefined && /^\d+$/.test(v) ? Number(v) : d);

const opts: ChaosOptions = {
  ...LONG,
  seed: values.seed !== undefined ? num(values.seed, 0) >>> 0 : chaosSeed(),
  loadMs: num(values["load-s"], LONG.loadMs / 1000) * 1000,
  threads: num(values.threads, LONG.threads),
  turnsPerThread: num(values.turns, LONG.turnsPerThread),
  workers: num(values.workers, LONG.workers),
  ingress: num(values.ingress, LONG.ingress),
  apiKeys: Math.max(1, num(values["api-keys"], LONG.apiKeys)),
  log: (line) => process.stdout.write(line + "\n"),
};

const session = new ChaosSession(opts);
let interrupted = false;
const onSignal = () => {
  if (interrupted) process.exit(130);
  interrupted = true;
  process.stdout.write("\ninterrupted: cleaning up (again to exit at once)\n");
  void session.dispose().then(() => process.exit(130));
};
process.on("SIGINT", onSignal);
process.on("SIGTERM", onSignal);

try {
  const result = await session.run();
  process.stdout.write("\n" + result.report + "\n\n" + result.debug + "\n");
  await session.dispose();
  process.exit(result.ok ? 0 : 1);
} catch (err) {
  process.stderr.write(`chaos: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  await session.dispose();
  process.exit(1);
}
