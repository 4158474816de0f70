import { createServer, type AddressInfo, type Socket } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import {
  adminRedis,
  clientList,
  deleteKeys,
  randomConnectionName,
  randomPrefix,
  REDIS_URL,
  xreadBlocked,
} from "../../test/support/redis.js";
import { isCapstanError } from "../errors.js";
import { silentLogger } from "../logger.js";
import { pollUntil, runCoordinationConformance } from "./conformance.js";
import { createRedisCoordination, type RedisCoordinationOptions } from "./redis/index.js";
import type { Coordination } from "./types.js";

/** A read that must be woken (or answered) by something else: longer than any test's timeout. */
const FOREVER_MS = 600_000;

// Real Redis only (never mocked); every fixture has its own key prefix and deletes its keys.
runCoordinationConformance("redis", async ({ events }) => {
  const keyPrefix = randomPrefix();
  const name = randomConnectionName();
  const opened: Coordination[] = [];
  const open = (): Coordination => {
    const c = createRedisCoordination({
      url: REDIS_URL,
      keyPrefix,
      logger: silentLogger(),
      events,
      connectionName: name,
    });
    opened.push(c);
    return c;
  };
  const admin = adminRedis();
  return {
    coord: open(),
    sibling: async () => open(),
    // A multiplexed XREAD of this fixture (its instances share the name) is blocked in Redis.
    readersParked: () => xreadBlocked(admin, `${name}:blk`),
    cleanup: async () => {
      await Promise.all(opened.map((c) => c.close()));
      await deleteKeys(keyPrefix);
      admin.disconnect();
    },
  };
});

describe("redis coordination specifics", () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  function open(extra: Partial<RedisCoordinationOptions> = {}): { coord: Coordination; prefix: string } {
    const prefix = randomPrefix();
    const coord = createRedisCoordination({
      url: REDIS_URL,
      keyPrefix: prefix,
      logger: silentLogger(),
      events: { maxLen: 1000, ttlMs: 60_000 },
      ...extra,
    });
    cleanups.push(
      () => deleteKeys(prefix),
      () => coord.close(),
    );
    return { coord, prefix };
  }

  /** One inspection connection per test (polling must not open one per call). */
  let adminConn: ReturnType<typeof adminRedis> | undefined;
  function admin(): ReturnType<typeof adminRedis> {
    if (!adminConn) {
      const r = adminRedis();
      adminConn = r;
      cleanups.push(async () => {
        r.disconnect();
        adminConn = undefined;
      });
    }
    return adminConn;
  }

  /** Kill this test's server-side connections whose name starts with `name`. */
  async function killConnections(name: string, role?: "cmd" | "blk"): Promise<number> {
    const r = admin();
    const victims = (await clientList(r)).filter(
      (c) => c.id && c.name?.startsWith(`${name}:`) && (!role || c.name === `${name}:${role}`),
    );
    for (const v of victims) await r.call("CLIENT", ["KILL", "ID", v.id!]);
    return victims.length;
  }

  async function connectionCount(name: string): Promise<number> {
    return (await clientList(admin())).filter((c) => c.name?.startsWith(`${name}:`)).length;
  }

  /** Wait until this test's multiplexed XREAD is blocked in Redis (CLIENT LIST). */
  const blocked = (name: string) =>
    pollUntil(() => xreadBlocked(admin(), `${name}:blk`), "the blocking XREAD to reach Redis");

  it("stores entries under exact ids N-k with type and JSON data, and a TTL", async () => {
    const { coord, prefix } = open();
    expect(
      await coord.events.publish("run1", [
        { id: "3", type: "step", data: { a: 1 } },
        { id: "3.2", type: "delta", data: { text: "hi" } },
      ]),
    ).toBe(2);
    const r = admin();
    const key = `${prefix}ev:run1`;
    expect(await r.xrange(key, "-", "+")).toEqual([
      ["3-0", ["type", "step", "data", '{"a":1}']],
      ["3-2", ["type", "delta", "data", '{"text":"hi"}']],
    ]);
    const pttl = await r.pttl(key);
    expect(pttl).toBeGreaterThan(50_000);
    expect(pttl).toBeLessThanOrEqual(60_000);

    await coord.cache.set("c", "v", 10_000);
    expect(await r.get(`${prefix}kv:c`)).toBe("v");
    await coord.rateLimiter.consume("l", { points: 5, durationMs: 10_000 });
    expect(await r.exists(`${prefix}rl:l`)).toBe(1);
    expect(await r.pttl(`${prefix}rl:l`)).toBeGreaterThan(0);
  });

  it("serves a reader after its stream is deleted (a flush) and recreated", async () => {
    const { coord, prefix } = open();
    await coord.events.publish("r", [{ id: "5", type: "t", data: {} }]);
    const pending = coord.events.read("r", "5", { count: 10, blockMs: 30_000 });
    await admin().del(`${prefix}ev:r`);
    expect(await coord.events.exists("r")).toBe(false);
    // After a flush the stream starts again; the first id above the cursor wakes the reader.
    expect(await coord.events.publish("r", [{ id: "5.1", type: "t", data: {} }])).toBe(1);
    expect((await pending).map((e) => e.id)).toEqual(["5.1"]);
  });

  it("multiplexes any number of blocked readers onto two connections", async () => {
    const name = randomConnectionName();
    const { coord } = open({ connectionName: name });
    const readers = Array.from({ length: 50 }, (_, i) =>
      coord.events.read(`run${i}`, "0", { count: 10, blockMs: 30_000 }),
    );
    await pollUntil(async () => (await connectionCount(name)) === 2, "both connections");
    await blocked(name);
    for (let i = 0; i < 50; i++)
      await coord.events.publish(`run${i}`, [{ id: "1", type: `t${i}`, data: {} }]);
    const results = await Promise.all(readers);
    expect(results.map((r) => r[0]?.type)).toEqual(Array.from({ length: 50 }, (_, i) => `t${i}`));
    expect(await connectionCount(name)).toBe(2);
  });

  it("serves a reader that joins during an in-flight block at once (CLIENT UNBLOCK), not after the slice", async () => {
    // Neither the slice nor the first reader's block ends within the test's timeout: only
    // CLIENT UNBLOCK can make the in-flight XREAD (on "a" alone) give way to one that includes "b".
    const name = randomConnectionName();
    const { coord } = open({ connectionName: name, blockSliceMs: FOREVER_MS });
    const first = coord.events.read("a", "0", { count: 10, blockMs: FOREVER_MS });
    await blocked(name);
    const second = coord.events.read("b", "0", { count: 10, blockMs: FOREVER_MS });
    await coord.events.publish("b", [{ id: "1", type: "t", data: {} }]);
    expect((await second).map((e) => e.id)).toEqual(["1"]);
    await coord.events.publish("a", [{ id: "1", type: "t", data: {} }]);
    expect((await first).map((e) => e.id)).toEqual(["1"]);
  });

  it("stays correct with tiny block slices (no reliance on CLIENT UNBLOCK)", async () => {
    const name = randomConnectionName();
    const { coord } = open({ connectionName: name, blockSliceMs: 20 });
    const a = coord.events.read("a", "0", { count: 10, blockMs: 30_000 });
    const timedOut = coord.events.read("b", "0", { count: 10, blockMs: 150 });
    await blocked(name); // c joins while a slice is in flight
    const c = coord.events.read("c", "0", { count: 10, blockMs: 30_000 });
    expect(await timedOut).toEqual([]);
    await coord.events.publish("c", [{ id: "1", type: "t", data: {} }]);
    await coord.events.publish("a", [{ id: "1", type: "t", data: {} }]);
    expect((await c).map((e) => e.id)).toEqual(["1"]);
    expect((await a).map((e) => e.id)).toEqual(["1"]);
  });

  it("refuses blocked readers beyond maxBlockedReaders", async () => {
    const { coord } = open({ maxBlockedReaders: 2 });
    const a = coord.events.read("r", "0", { count: 1, blockMs: 30_000 });
    const b = coord.events.read("r", "0", { count: 1, blockMs: 30_000 });
    const refused = await coord.events.read("r", "0", { count: 1, blockMs: 30_000 }).catch((e: unknown) => e);
    expect(isCapstanError(refused, "redis_unavailable")).toBe(true);
    await coord.events.publish("r", [{ id: "1", type: "t", data: {} }]);
    expect((await a).length).toBe(1);
    expect((await b).length).toBe(1);
  });

  it("fails blocked readers fast when their connection drops, then reconnects by itself", async () => {
    const name = randomConnectionName();
    const { coord } = open({ connectionName: name });
    // Blocked longer than the test may run: only the dropped connection can end it.
    const pending = coord.events.read("r", "0", { count: 1, blockMs: FOREVER_MS }).catch((e: unknown) => e);
    await pollUntil(async () => (await connectionCount(name)) === 2, "both connections");
    await blocked(name);
    expect(await killConnections(name)).toBe(2);
    const err = await pending;
    expect(isCapstanError(err, "redis_unavailable"), String(err)).toBe(true);
    // No intervention: both connections come back and everything works again.
    await pollUntil(() => coord.ping(), "ping after reconnect");
    await pollUntil(
      async () => (await coord.events.publish("r", [{ id: "1", type: "t", data: {} }]).catch(() => -1)) >= 0,
      "publish after reconnect",
    );
    await pollUntil(async () => (await connectionCount(name)) === 2, "both connections back");
    const again = coord.events.read("r", "1", { count: 1, blockMs: FOREVER_MS });
    await blocked(name);
    await coord.events.publish("r", [{ id: "2", type: "t", data: {} }]);
    expect((await again).map((e) => e.id)).toEqual(["2"]);
  });

  // Fail fast, by contract: no offline queue, and a bounded wait for a connection attempt in
  // progress. The tests assert which bound ended each call (its message), not how long it took:
  // a call that was not bounded would hang past the test's timeout instead.
  const BOUNDED = /redis not connected after 300ms|redis is unreachable \(reconnecting\)/;

  it("ping() is false when Redis is unreachable, and commands fail fast on the bounded wait", async () => {
    const coord = createRedisCoordination({
      url: "redis://127.0.0.1:1",
      keyPrefix: randomPrefix(),
      logger: silentLogger(),
      events: { maxLen: 10, ttlMs: 1000 },
      readyTimeoutMs: 300,
    });
    cleanups.push(() => coord.close());
    expect(await coord.ping()).toBe(false);

    const err = await coord.cache.get("k").catch((e: unknown) => e);
    expect(isCapstanError(err, "redis_unavailable"), String(err)).toBe(true);
    expect((err as Error).message).toMatch(BOUNDED);

    const err2 = await coord.events
      .read("r", "0", { count: 1, blockMs: FOREVER_MS })
      .catch((e: unknown) => e);
    expect(isCapstanError(err2, "redis_unavailable"), String(err2)).toBe(true);
    expect((err2 as Error).message).toMatch(BOUNDED);

    await coord.close();
    expect(await coord.ping()).toBe(false);
  });

  it("ping() is false and commands fail on their bound when the server never answers", async () => {
    // A TCP server that accepts and then says nothing: a paused or wedged Redis.
    const sockets = new Set<Socket>();
    const silent = createServer((s) => {
      sockets.add(s);
      s.on("error", () => {});
    });
    await new Promise<void>((r) => silent.listen(0, "127.0.0.1", r));
    cleanups.push(
      () =>
        new Promise<void>((r) => {
          for (const s of sockets) s.destroy();
          silent.close(() => r());
        }),
    );
    const { port } = silent.address() as AddressInfo;
    const coord = createRedisCoordination({
      url: `redis://127.0.0.1:${port}`,
      keyPrefix: randomPrefix(),
      logger: silentLogger(),
      events: { maxLen: 10, ttlMs: 1000 },
      readyTimeoutMs: 300,
      pingTimeoutMs: 300,
    });
    cleanups.push(() => coord.close());
    expect(await coord.ping()).toBe(false);
    // The socket is connected, so the failure is the bounded wait for "ready", not a refusal.
    expect(sockets.size).toBeGreaterThan(0);
    const err = await coord.rateLimiter
      .consume("k", { points: 1, durationMs: 1000 })
      .catch((e: unknown) => e);
    expect(isCapstanError(err, "redis_unavailable"), String(err)).toBe(true);
    expect((err as Error).message).toMatch(BOUNDED);
    await coord.close();
  });
});
