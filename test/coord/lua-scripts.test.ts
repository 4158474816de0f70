/**
 * The Lua scripts keep working when Redis loses its script cache (SCRIPT FLUSH,
 * a restart): ioredis's defineCommand resends the body on NOSCRIPT, so no
 * caller handles it. A private redis-server, so flushing its script cache and
 * restarting it touches no other test.
 */
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createRedisCoordination } from "../../src/coord/redis/index.js";
import type { Coordination } from "../../src/coord/types.js";
import { createCostBackend, type CostBackend } from "../../src/cost/backend.js";
import { silentLogger } from "../../src/logger.js";
import { startPrivateRedis, type PrivateRedis } from "../support/private-services.js";
import { until } from "../support/pg.js";

const SRC = fileURLToPath(new URL("../../src/", import.meta.url));
/** SHA1 of every script file under src/, as Redis names a cached script. */
const SHAS = readdirSync(SRC, { recursive: true, encoding: "utf8" })
  .filter((f) => f.endsWith(".lua"))
  .map((f) =>
    createHash("sha1")
      .update(readFileSync(join(SRC, f), "utf8"))
      .digest("hex"),
  );

let redis: PrivateRedis;
let admin: Redis;
let coord: Coordination;
let cost: CostBackend;
let round = 0;

beforeAll(async () => {
  redis = await startPrivateRedis();
  admin = new Redis(redis.url, { maxRetriesPerRequest: 1, lazyConnect: false });
  const logger = silentLogger();
  coord = createRedisCoordination({
    url: redis.url,
    keyPrefix: "t:",
    logger,
    events: { maxLen: 10, ttlMs: 60_000 },
  });
  cost = createCostBackend({ redis: { url: redis.url, keyPrefix: "t:" }, logger });
});
afterAll(async () => {
  await coord?.close();
  await cost?.close();
  admin?.disconnect();
  await redis?.close();
});

/** Runs each of the seven scripts once, on fresh keys, checking that it did its work. */
async function useEveryScript(): Promise<void> {
  const k = `r${++round}`;
  // take-tokens
  const taken = await coord.rateLimiter.consume(k, { points: 2, durationMs: 60_000 });
  expect(taken).toMatchObject({ allowed: true, remaining: 1 });
  // budget-reserve (asks for a seed first), budget-extend, budget-settle
  const period = { key: `{${k}}:d`, budget: 100, usedTtlMs: 60_000 };
  const o = { ttlMs: 30_000, resyncMs: 60_000 };
  expect(await cost.budget.reserve([period], "res", 40, o)).toEqual({ kind: "seed", periods: [0] });
  expect(await cost.budget.reserve([{ ...period, seed: 50 }], "res", 40, o)).toEqual({ kind: "admitted" });
  expect(await cost.budget.reserve([period], "res2", 20, o)).toMatchObject({ kind: "refused", used: 50 });
  expect(await cost.budget.extend([period.key], "res", 30_000)).toBe(true);
  await cost.budget.settle([period.key], "res", 10);
  expect(await cost.budget.reserve([period], "res3", 40, o)).toEqual({ kind: "admitted" });
  // limit-acquire, limit-finish, limit-cooldown
  const rule = { rpm: 1, windowMs: 60_000 };
  expect(await cost.limits.acquire(k, rule, "a", 5)).toEqual({ ok: true });
  expect(await cost.limits.acquire(k, rule, "b", 5)).toMatchObject({ ok: false, reason: "rpm" });
  await cost.limits.finish(k, rule, "a", 7);
  await cost.limits.cooldown(`${k}-cool`, 30_000);
  expect(await cost.limits.acquire(`${k}-cool`, rule, "c", 1)).toMatchObject({
    ok: false,
    reason: "cooldown",
  });
}

async function cached(): Promise<number[]> {
  return (await admin.script("EXISTS", ...SHAS)) as number[];
}

describe("Lua scripts after Redis loses its script cache", () => {
  it("exercises every script file (seven)", () => {
    expect(SHAS).toHaveLength(7);
  });

  it("every script runs again after SCRIPT FLUSH", async () => {
    await useEveryScript();
    expect(await cached()).toEqual(SHAS.map(() => 1));
    expect(await admin.script("FLUSH")).toBe("OK");
    expect(await cached()).toEqual(SHAS.map(() => 0));
    // Same connections, so ioredis sends EVALSHA first and meets NOSCRIPT.
    await useEveryScript();
    expect(await cached()).toEqual(SHAS.map(() => 1));
  });

  it("every script runs again after Redis restarts (empty, on new sockets)", async () => {
    await redis.restart();
    await until(() => coord.ping(), { what: "coordination reconnected" });
    await until(
      () =>
        cost.limits.cooldown("probe", 1).then(
          () => true,
          () => false,
        ),
      { what: "cost connection reconnected" },
    );
    await useEveryScript();
    expect(await cached()).toEqual(SHAS.map(() => 1));
  });
});
