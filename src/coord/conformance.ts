/**
 * The one behavioural contract of a `Coordination` backend, as vitest blocks.
 * Every implementation runs it (./memory.test.ts, ./redis.test.ts), so the
 * embedded dev mode behaves like production. Test-only: imports vitest, and is
 * not exported from ./index.ts.
 *
 * Timing: nothing here uses a sleep to synchronise or asserts how long
 * something took. Waits for expiry or refill poll until a condition holds
 * (with a generous deadline); a test that needs a reader parked in a blocking
 * read waits until the backend reports it (`readersParked`). A read that must
 * be ended by something else (a publish, an abort, close) blocks for longer
 * than the test may run, so if that something does not end it the test fails.
 */
import { setTimeout as delay } from "node:timers/promises";
import { afterEach, describe, expect, it } from "vitest";
import { isCapstanError } from "../errors.js";
import type { Coordination, EventStreamOptions, StreamEvent } from "./types.js";

export interface CoordinationFixture {
  coord: Coordination;
  /**
   * Another handle on the same backend, as a second process would see it
   * (Redis: a new instance with the same key prefix; memory: the same instance).
   * Must be closed by `cleanup`.
   */
  sibling?: () => Promise<Coordination>;
  /**
   * True once the readers started so far wait inside the backend (Redis: the
   * multiplexed XREAD of `coord` is blocked, per CLIENT LIST). Absent: a
   * reader is parked as soon as `read` is called (memory).
   */
  readersParked?: () => Promise<boolean>;
  /** Close everything the fixture opened and remove its data. */
  cleanup(): Promise<void>;
}

/** Creates an isolated backend; `events` overrides the stream options for tests that need short limits. */
export type CoordinationFactory = (opts: { events: EventStreamOptions }) => Promise<CoordinationFixture>;

const DEFAULT_EVENTS: EventStreamOptions = { maxLen: 1_000, ttlMs: 60_000 };

/** A block that must be ended by something else: longer than any test's timeout. */
const FOREVER_MS = 600_000;

/** Poll `check` until it returns true, or fail after `timeoutMs`. */
export async function pollUntil(
  check: () => Promise<boolean> | boolean,
  what: string,
  timeoutMs = 10_000,
  intervalMs = 20,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs}ms waiting for ${what}`);
    await delay(intervalMs);
  }
}

function ev(id: string, type = "test", data: Record<string, unknown> = { id }): StreamEvent {
  return { id, type, data };
}

const ids = (events: StreamEvent[]): string[] => events.map((e) => e.id);

async function expectCode(p: Promise<unknown>, code: Parameters<typeof isCapstanError>[1]): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected a ${code} error`).toBeDefined();
  expect(isCapstanError(err, code), `expected code ${code}, got ${String(err)}`).toBe(true);
}

export function runCoordinationConformance(name: string, factory: CoordinationFactory): void {
  describe(`coordination conformance: ${name}`, () => {
    const fixtures: CoordinationFixture[] = [];
    afterEach(async () => {
      await Promise.all(fixtures.splice(0).map((f) => f.cleanup()));
    });
    async function setup(events: Partial<EventStreamOptions> = {}): Promise<CoordinationFixture> {
      const f = await factory({ events: { ...DEFAULT_EVENTS, ...events } });
      fixtures.push(f);
      return f;
    }
    async function sibling(f: CoordinationFixture): Promise<Coordination> {
      return f.sibling ? f.sibling() : f.coord;
    }
    async function parked(f: CoordinationFixture): Promise<void> {
      const check = f.readersParked;
      if (check) await pollUntil(check, "the blocked read to park in the backend");
    }

    it("is reachable", async () => {
      const { coord } = await setup();
      expect(["redis", "memory"]).toContain(coord.kind);
      expect(await coord.ping()).toBe(true);
    });

    describe("event stream", () => {
      it("reads events in order after a cursor, at most count", async () => {
        const { coord } = await setup();
        const all = ["1", "1.1", "1.2", "2", "3", "3.1"];
        expect(
          await coord.events.publish(
            "r",
            all.map((id) => ev(id, `t${id}`)),
          ),
        ).toBe(6);

        const got = await coord.events.read("r", "0", { count: 100 });
        expect(ids(got)).toEqual(all);
        expect(got[1]).toEqual({ id: "1.1", type: "t1.1", data: { id: "1.1" } });

        expect(ids(await coord.events.read("r", "1.1", { count: 100 }))).toEqual(["1.2", "2", "3", "3.1"]);
        expect(ids(await coord.events.read("r", "1", { count: 100 }))).toEqual([
          "1.1",
          "1.2",
          "2",
          "3",
          "3.1",
        ]);
        expect(ids(await coord.events.read("r", "1.0", { count: 100 }))).toEqual([
          "1.1",
          "1.2",
          "2",
          "3",
          "3.1",
        ]);
        expect(ids(await coord.events.read("r", "2", { count: 2 }))).toEqual(["3", "3.1"]);
        expect(ids(await coord.events.read("r", "0", { count: 1 }))).toEqual(["1"]);
        // A cursor between stored ids (e.g. a delta that was never published) still works.
        expect(ids(await coord.events.read("r", "2.7", { count: 100 }))).toEqual(["3", "3.1"]);
        expect(await coord.events.read("r", "3.1", { count: 100 })).toEqual([]);
        expect(await coord.events.read("r", "99", { count: 100 })).toEqual([]);
        expect(await coord.events.read("never-published", "0", { count: 100 })).toEqual([]);
      });

      it("round-trips data as JSON and shares no objects with callers", async () => {
        const { coord } = await setup();
        const data = { text: "héllo ✓ \u0000 \n", n: 1.5, neg: -3, nested: { a: [1, { b: null }] }, t: true };
        const e = ev("1", "delta", data);
        await coord.events.publish("r", [e]);
        data.nested.a.push(99);
        const [first] = await coord.events.read("r", "0", { count: 1 });
        expect(first).toEqual({
          id: "1",
          type: "delta",
          data: { text: "héllo ✓ \u0000 \n", n: 1.5, neg: -3, nested: { a: [1, { b: null }] }, t: true },
        });
        first!.data.text = "mutated";
        const [again] = await coord.events.read("r", "0", { count: 1 });
        expect(again!.data.text).toBe("héllo ✓ \u0000 \n");
      });

      it("drops stale and duplicate ids without counting them", async () => {
        const { coord } = await setup();
        expect(await coord.events.publish("r", [ev("1"), ev("2"), ev("3")])).toBe(3);
        // A zombie re-publishing old ids among a new one: only the new one lands.
        expect(await coord.events.publish("r", [ev("2", "zombie"), ev("3", "zombie"), ev("4")])).toBe(1);
        expect(await coord.events.publish("r", [ev("4", "zombie")])).toBe(0);
        expect(await coord.events.publish("r", [ev("4.1"), ev("4.2")])).toBe(2);
        // A late delta of an earlier step is stale too.
        expect(await coord.events.publish("r", [ev("3.5", "zombie"), ev("4.2", "zombie")])).toBe(0);
        // Out of order inside one batch: the later, smaller id is dropped.
        expect(await coord.events.publish("r", [ev("6"), ev("5", "zombie"), ev("7")])).toBe(2);
        const got = await coord.events.read("r", "0", { count: 100 });
        expect(ids(got)).toEqual(["1", "2", "3", "4", "4.1", "4.2", "6", "7"]);
        expect(got.every((e) => e.type === "test")).toBe(true);
        expect(await coord.events.publish("r", [])).toBe(0);
      });

      it("keeps runs apart and reports existence", async () => {
        const { coord } = await setup();
        expect(await coord.events.exists("a")).toBe(false);
        await coord.events.publish("a", [ev("1"), ev("2")]);
        await coord.events.publish("b", [ev("1", "other")]);
        expect(await coord.events.exists("a")).toBe(true);
        expect(await coord.events.exists("b")).toBe(true);
        expect(await coord.events.exists("c")).toBe(false);
        expect(await coord.events.read("b", "0", { count: 10 })).toEqual([
          { id: "1", type: "other", data: { id: "1" } },
        ]);
        expect(ids(await coord.events.read("a", "0", { count: 10 }))).toEqual(["1", "2"]);
      });

      it("refuses invalid ids and arguments, appending nothing from a bad batch", async () => {
        const { coord } = await setup();
        for (const bad of ["abc", "-1", "1.", "01", "0", "2.0", " 1"]) {
          await expectCode(coord.events.publish("r", [ev("1"), ev(bad)]), "validation_failed");
        }
        await expectCode(coord.events.publish("r", [{ id: "1", type: "", data: {} }]), "validation_failed");
        expect(await coord.events.exists("r")).toBe(false);
        for (const bad of ["x", "", "1-0", "1.2.3"]) {
          await expectCode(coord.events.read("r", bad, { count: 1 }), "validation_failed");
        }
        await expectCode(coord.events.read("r", "0", { count: 0 }), "validation_failed");
        await expectCode(coord.events.read("r", "0", { count: 1, blockMs: -1 }), "validation_failed");
      });

      it("trims each stream to about maxLen, keeping the newest", async () => {
        const maxLen = 10;
        const { coord } = await setup({ maxLen });
        const total = 400;
        for (let start = 1; start <= total; start += 50) {
          const batch = Array.from({ length: 50 }, (_, i) => ev(String(start + i)));
          expect(await coord.events.publish("r", batch)).toBe(50);
        }
        const got = await coord.events.read("r", "0", { count: 10_000 });
        // Redis trims approximately (whole macro nodes of up to 100 entries): never below
        // maxLen, at most one node above it. Memory trims exactly.
        expect(got.length).toBeGreaterThanOrEqual(maxLen);
        expect(got.length).toBeLessThanOrEqual(maxLen + 100);
        const nums = got.map((e) => Number(e.id));
        expect(nums).toEqual(Array.from({ length: got.length }, (_, i) => total - got.length + 1 + i));
        // Trimming does not lower the top: an old id is still refused.
        expect(await coord.events.publish("r", [ev("5")])).toBe(0);
      });

      it("expires a stream ttlMs after its last publish", async () => {
        const { coord } = await setup({ ttlMs: 300 });
        await coord.events.publish("r", [ev("1"), ev("2")]);
        expect(await coord.events.exists("r")).toBe(true);
        await pollUntil(async () => !(await coord.events.exists("r")), "the stream to expire");
        expect(await coord.events.read("r", "0", { count: 10 })).toEqual([]);
        // A new stream starts from scratch: old ids are accepted again.
        expect(await coord.events.publish("r", [ev("1")])).toBe(1);
      });

      it("refreshes the TTL on every publish", async () => {
        const ttlMs = 600;
        const { coord } = await setup({ ttlMs });
        const started = Date.now();
        let n = 0;
        // Publish every ~100 ms for more than two TTLs; the stream must never lapse.
        while (Date.now() - started < ttlMs * 2.5) {
          await coord.events.publish("r", [ev(String(++n))]);
          expect(await coord.events.exists("r")).toBe(true);
          await delay(100);
        }
        expect((await coord.events.read("r", "0", { count: 1000 })).length).toBe(n);
      });

      it("returns [] after blockMs when nothing arrives", async () => {
        const f = await setup();
        await f.coord.events.publish("r", [ev("1")]);
        let settled = false;
        const pending = f.coord.events.read("r", "1", { count: 10, blockMs: 2_000 }).finally(() => {
          settled = true;
        });
        // It waits (parked in the backend, unanswered), then answers [] on its own.
        await parked(f);
        expect(settled).toBe(false);
        expect(await pending).toEqual([]);
      });

      it("returns available events at once even with blockMs", async () => {
        const { coord } = await setup();
        await coord.events.publish("r", [ev("1"), ev("1.1")]);
        expect(ids(await coord.events.read("r", "1", { count: 10, blockMs: FOREVER_MS }))).toEqual(["1.1"]);
      });

      it("wakes a blocked reader when an event is published", async () => {
        const f = await setup();
        const pending = f.coord.events.read("r", "0", { count: 10, blockMs: FOREVER_MS });
        await parked(f);
        await f.coord.events.publish("r", [ev("1", "hello")]);
        expect(await pending).toEqual([{ id: "1", type: "hello", data: { id: "1" } }]);
      });

      it("wakes many blocked readers, each from its own cursor and run", async () => {
        const f = await setup();
        const { coord } = f;
        await coord.events.publish("a", [ev("1")]);
        let r2Done = false;
        const r1 = coord.events.read("a", "1", { count: 10, blockMs: 30_000 });
        const r2 = coord.events.read("a", "2", { count: 10, blockMs: 30_000 }).finally(() => (r2Done = true));
        const r3 = coord.events.read("b", "0", { count: 10, blockMs: 30_000 });
        const r4 = coord.events.read("c", "0", { count: 1, blockMs: 30_000 });
        await parked(f);
        await coord.events.publish("a", [ev("2")]);
        expect(ids(await r1)).toEqual(["2"]);
        expect(r2Done).toBe(false);
        await coord.events.publish("a", [ev("2.1"), ev("3")]);
        expect(ids(await r2)).toEqual(["2.1", "3"]);
        await coord.events.publish("b", [ev("1")]);
        expect(ids(await r3)).toEqual(["1"]);
        await coord.events.publish("c", [ev("1"), ev("2")]);
        expect(ids(await r4)).toEqual(["1"]);
      });

      it("sees events published through another instance", async () => {
        const f = await setup();
        const other = await sibling(f);
        const pending = f.coord.events.read("r", "0", { count: 10, blockMs: FOREVER_MS });
        await parked(f);
        await other.events.publish("r", [ev("1")]);
        expect(ids(await pending)).toEqual(["1"]);
        expect(await other.events.exists("r")).toBe(true);
      });

      it("ends a blocked read when its signal aborts, and keeps serving others", async () => {
        const f = await setup();
        const { coord } = f;
        const ac = new AbortController();
        const aborted = coord.events.read("r", "0", { count: 10, blockMs: FOREVER_MS, signal: ac.signal });
        const other = coord.events.read("r", "0", { count: 10, blockMs: FOREVER_MS });
        await parked(f);
        ac.abort();
        expect(await aborted).toEqual([]);
        // An already-aborted signal never waits.
        expect(
          await coord.events.read("r", "0", { count: 10, blockMs: FOREVER_MS, signal: ac.signal }),
        ).toEqual([]);
        await coord.events.publish("r", [ev("1")]);
        expect(ids(await other)).toEqual(["1"]);
        // With events available, an aborted signal still returns them (it only cancels waiting).
        expect(
          ids(await coord.events.read("r", "0", { count: 10, blockMs: FOREVER_MS, signal: ac.signal })),
        ).toEqual(["1"]);
      });

      it("wakes blocked readers with [] on close, then reports unreachable", async () => {
        const f = await setup();
        const { coord } = f;
        const pending = coord.events.read("r", "0", { count: 10, blockMs: FOREVER_MS });
        await parked(f);
        await coord.close();
        expect(await pending).toEqual([]);
        expect(await coord.ping()).toBe(false);
        await expect(coord.events.publish("r", [ev("1")])).rejects.toThrow();
        await coord.close(); // idempotent
      });
    });

    describe("rate limiter", () => {
      it("allows up to points, then denies with a retry delay", async () => {
        const { coord } = await setup();
        const rule = { points: 3, durationMs: 60_000 };
        const results = [];
        for (let i = 0; i < 3; i++) results.push(await coord.rateLimiter.consume("k", rule));
        expect(results.map((r) => r.allowed)).toEqual([true, true, true]);
        expect(results.map((r) => r.remaining)).toEqual([2, 1, 0]);
        for (const r of results) {
          expect(r.limit).toBe(3);
          expect(r.retryAfterMs).toBe(0);
          expect(r.resetMs).toBeGreaterThan(0);
          expect(r.resetMs).toBeLessThanOrEqual(60_000);
        }
        const denied = await coord.rateLimiter.consume("k", rule);
        expect(denied.allowed).toBe(false);
        expect(denied.limit).toBe(3);
        expect(denied.remaining).toBe(0);
        // One token refills every 20 s.
        expect(denied.retryAfterMs).toBeGreaterThan(15_000);
        expect(denied.retryAfterMs).toBeLessThanOrEqual(20_000);
        expect(denied.resetMs).toBeGreaterThan(50_000);
        expect(denied.resetMs).toBeLessThanOrEqual(60_000);
        // Denials consume nothing, and other keys are independent.
        expect((await coord.rateLimiter.consume("k", rule)).allowed).toBe(false);
        expect((await coord.rateLimiter.consume("other", rule)).remaining).toBe(2);
      });

      it("charges cost points at once", async () => {
        const { coord } = await setup();
        const rule = { points: 10, durationMs: 60_000 };
        const a = await coord.rateLimiter.consume("k", rule, 7);
        expect(a).toMatchObject({ allowed: true, remaining: 3, retryAfterMs: 0 });
        const b = await coord.rateLimiter.consume("k", rule, 5);
        expect(b.allowed).toBe(false);
        expect(b.remaining).toBe(3);
        // 2 tokens missing at 6 s per token.
        expect(b.retryAfterMs).toBeGreaterThan(10_000);
        expect(b.retryAfterMs).toBeLessThanOrEqual(12_000);
        expect((await coord.rateLimiter.consume("k", rule, 3)).allowed).toBe(true);
        expect((await coord.rateLimiter.consume("k", rule, 0)).allowed).toBe(true);
        const tooBig = await coord.rateLimiter.consume("big", rule, 11);
        expect(tooBig.allowed).toBe(false);
        expect(tooBig.retryAfterMs).toBeGreaterThan(0);
      });

      it("refills over durationMs", async () => {
        const { coord } = await setup();
        const rule = { points: 2, durationMs: 400 };
        await coord.rateLimiter.consume("k", rule);
        await coord.rateLimiter.consume("k", rule);
        const denied = await coord.rateLimiter.consume("k", rule);
        expect(denied.allowed).toBe(false);
        expect(denied.retryAfterMs).toBeLessThanOrEqual(200);
        await pollUntil(
          async () => (await coord.rateLimiter.consume("k", rule)).allowed,
          "a token to refill",
        );
      });

      it("is atomic under concurrency and shared by every instance on the backend", async () => {
        const f = await setup();
        const other = await sibling(f);
        const rule = { points: 10, durationMs: 600_000 };
        const results = await Promise.all(
          Array.from({ length: 30 }, (_, i) => (i % 2 ? other : f.coord).rateLimiter.consume("shared", rule)),
        );
        expect(results.filter((r) => r.allowed).length).toBe(10);
        expect((await other.rateLimiter.consume("shared", rule)).allowed).toBe(false);
        expect((await f.coord.rateLimiter.consume("shared", rule)).allowed).toBe(false);
      });

      it("refuses invalid rules", async () => {
        const { coord } = await setup();
        await expectCode(
          coord.rateLimiter.consume("k", { points: 0, durationMs: 1000 }),
          "validation_failed",
        );
        await expectCode(coord.rateLimiter.consume("k", { points: 1, durationMs: 0 }), "validation_failed");
        await expectCode(
          coord.rateLimiter.consume("k", { points: 1, durationMs: 1000 }, -1),
          "validation_failed",
        );
        await expectCode(
          coord.rateLimiter.consume("k", { points: NaN, durationMs: 1000 }),
          "validation_failed",
        );
      });
    });

    describe("kv cache", () => {
      it("gets, sets, overwrites and deletes", async () => {
        const { coord } = await setup();
        expect(await coord.cache.get("k")).toBeNull();
        await coord.cache.set("k", "v1", 60_000);
        expect(await coord.cache.get("k")).toBe("v1");
        await coord.cache.set("k", "", 60_000);
        expect(await coord.cache.get("k")).toBe("");
        await coord.cache.set("k", "v2 ✓", 60_000);
        expect(await coord.cache.get("k")).toBe("v2 ✓");
        expect(await coord.cache.get("other")).toBeNull();
        await coord.cache.delete("k");
        expect(await coord.cache.get("k")).toBeNull();
        await coord.cache.delete("missing"); // no error
        await expectCode(coord.cache.set("k", "v", 0), "validation_failed");
      });

      it("setIfAbsent sets only once", async () => {
        const { coord } = await setup();
        expect(await coord.cache.setIfAbsent("k", "first", 60_000)).toBe(true);
        expect(await coord.cache.setIfAbsent("k", "second", 60_000)).toBe(false);
        expect(await coord.cache.get("k")).toBe("first");
        await coord.cache.delete("k");
        expect(await coord.cache.setIfAbsent("k", "third", 60_000)).toBe(true);
        expect(await coord.cache.get("k")).toBe("third");
      });

      it("expires entries after their TTL", async () => {
        const { coord } = await setup();
        await coord.cache.set("a", "x", 200);
        expect(await coord.cache.setIfAbsent("b", "y", 200)).toBe(true);
        expect(await coord.cache.get("a")).toBe("x");
        await pollUntil(async () => (await coord.cache.get("a")) === null, "entry a to expire");
        await pollUntil(async () => (await coord.cache.get("b")) === null, "entry b to expire");
        expect(await coord.cache.setIfAbsent("b", "z", 60_000)).toBe(true);
        expect(await coord.cache.get("b")).toBe("z");
      });

      it("is shared by every instance on the backend", async () => {
        const f = await setup();
        const other = await sibling(f);
        await f.coord.cache.set("k", "v", 60_000);
        expect(await other.cache.get("k")).toBe("v");
        expect(await other.cache.setIfAbsent("k", "w", 60_000)).toBe(false);
        await other.cache.delete("k");
        expect(await f.coord.cache.get("k")).toBeNull();
      });
    });
  });
}
