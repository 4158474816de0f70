import { afterAll, describe, expect, it } from "vitest";
import { ChaosSession, chaosSeed, SHORT } from "./chaos.js";

/**
 * The short chaos run (≤ 90 s): a real cluster on a private PostgreSQL and
 * Redis, hundreds of runs, and every kind of fault. `npm run chaos` is the
 * long version. Reproduce a failure's fault schedule with CHAOS_SEED=<seed>.
 */
const seed = chaosSeed();
const session = new ChaosSession({ ...SHORT, seed, log: (line) => process.stdout.write(line + "\n") });

afterAll(async () => {
  await session.dispose();
}, 60_000);

describe("chaos (short)", () => {
  it(`loses no run, duplicates no effect, leaves no gap (seed ${seed})`, async () => {
    const result = await session.run();
    process.stdout.write(result.report + "\n");
    // The fault timeline; on failure also the violations, failing runs and process output.
    process.stdout.write(result.debug + "\n");
    expect(
      result.violations.length,
      `seed ${seed}: ${result.violations.length} violations, first: ${result.violations.slice(0, 5).join(" | ")} (timeline and process output above)`,
    ).toBe(0);
    // The load really happened (typically 180–240 runs; fewer on a machine busy with other work).
    expect(result.figures.runsCreated).toBeGreaterThanOrEqual(100);
  }, 150_000);
});
