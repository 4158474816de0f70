import { describe, expect, it } from "vitest";
import { runCoordinationConformance } from "./conformance.js";
import { createMemoryCoordination } from "./memory.js";

runCoordinationConformance("memory", async ({ events }) => {
  const coord = createMemoryCoordination({ events });
  // One process, one store: "another instance on the same backend" is this instance.
  return { coord, sibling: async () => coord, cleanup: () => coord.close() };
});

describe("memory coordination bounds", () => {
  it("evicts the oldest cache entries beyond cacheMaxEntries", async () => {
    const coord = createMemoryCoordination({ events: { maxLen: 10, ttlMs: 60_000 }, cacheMaxEntries: 3 });
    try {
      for (const k of ["a", "b", "c", "d"]) await coord.cache.set(k, k, 60_000);
      expect(await coord.cache.get("a")).toBeNull();
      expect(await coord.cache.get("d")).toBe("d");
      await coord.cache.set("b", "b2", 60_000); // rewriting makes it the newest
      await coord.cache.set("e", "e", 60_000);
      expect(await coord.cache.get("c")).toBeNull();
      expect(await coord.cache.get("b")).toBe("b2");
    } finally {
      await coord.close();
    }
  });

  it("trims exactly to maxLen", async () => {
    const coord = createMemoryCoordination({ events: { maxLen: 3, ttlMs: 60_000 } });
    try {
      await coord.events.publish(
        "r",
        ["1", "2", "3", "4", "5"].map((id) => ({ id, type: "t", data: {} })),
      );
      const got = await coord.events.read("r", "0", { count: 100 });
      expect(got.map((e) => e.id)).toEqual(["3", "4", "5"]);
    } finally {
      await coord.close();
    }
  });

  it("refuses blocked readers beyond maxBlockedReaders", async () => {
    const coord = createMemoryCoordination({ events: { maxLen: 3, ttlMs: 60_000 }, maxBlockedReaders: 2 });
    try {
      const a = coord.events.read("r", "0", { count: 1, blockMs: 60_000 });
      const b = coord.events.read("r", "0", { count: 1, blockMs: 60_000 });
      await expect(coord.events.read("r", "0", { count: 1, blockMs: 60_000 })).rejects.toThrow(
        /too many blocked/,
      );
      await coord.events.publish("r", [{ id: "1", type: "t", data: {} }]);
      expect((await a).length).toBe(1);
      expect((await b).length).toBe(1);
    } finally {
      await coord.close();
    }
  });
});
