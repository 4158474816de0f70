/**
 * One suite for the memory store, run against each backend: the machine's
 * PostgreSQL (pgvector or, without it, the exact fallback), PGlite with
 * pgvector, and PGlite without it (the exact fallback, whatever the server).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { isCapstanError } from "../../src/errors.js";
import type { Db, Queryable } from "../../src/state/db.js";
import {
  MEMORY_LIMITS,
  deleteMemory,
  ensureVectorIndex,
  expireMemories,
  getMemory,
  listMemories,
  memoryBackend,
  putMemory,
  searchMemories,
  vectorIndexName,
  type MemoryBackend,
} from "../../src/state/memories.js";
import { ensureTenant } from "../../src/state/tenants.js";

export interface SuiteTarget {
  db: Db;
  close(): Promise<void>;
}

const MODEL = "test:fixed@4";

/** Exact cosine distance, as the store defines it. */
function cosineDistance(a: readonly number[], b: readonly number[]): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  a.forEach((x, i) => {
    const y = b[i] ?? 0;
    dot += x * y;
    na += x * x;
    nb += y * y;
  });
  return 1 - dot / Math.sqrt(na * nb);
}

/** A deterministic pseudo-random vector (LCG), for sets too large to write out. */
function pseudoVector(seed: number, dims: number): number[] {
  let s = (seed * 2654435761) >>> 0 || 1;
  return Array.from({ length: dims }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  });
}

function expectValidation(err: unknown, field: string): boolean {
  return isCapstanError(err, "validation_failed") && (err.fields ?? []).some((f) => f.field === field);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Captured {
  text: string;
  params: unknown[];
}

/** Planner settings that leave an index scan as the only way to order rows. */
async function forceIndex(q: Queryable): Promise<void> {
  await q.query("SET LOCAL enable_seqscan = off");
  await q.query("SET LOCAL enable_sort = off");
  await q.query("SET LOCAL enable_bitmapscan = off");
}

/**
 * A Db whose transactions run under `forceIndex` (pgvector searches run in
 * one) and record their statements: small test tables would otherwise be
 * scanned, never exercising the HNSW path.
 */
function forcedIndexDb(db: Db, captured: Captured[] = []): Db {
  return {
    ...db,
    tx: (fn) =>
      db.tx(async (q) => {
        await forceIndex(q);
        return fn({
          query: (text: string, params?: unknown[]) => {
            captured.push({ text, params: params ?? [] });
            return q.query(text, params);
          },
        });
      }),
  };
}

export function memoryStoreSuite(
  name: string,
  expected: MemoryBackend | "any",
  open: () => Promise<SuiteTarget>,
): void {
  describe(`memory store: ${name}`, () => {
    let target: SuiteTarget;
    let db: Db;
    let tenantA: string;
    let tenantB: string;
    let backend: MemoryBackend;

    beforeAll(async () => {
      target = await open();
      db = target.db;
      tenantA = (await ensureTenant(db, "mem-a")).id;
      tenantB = (await ensureTenant(db, "mem-b")).id;
      backend = await memoryBackend(db);
    });
    afterAll(async () => {
      await target?.close();
    });

    it("detects its backend from the schema", () => {
      if (expected !== "any") expect(backend).toBe(expected);
      else expect(["pgvector", "exact"]).toContain(backend);
    });

    it("returns the nearest memories in order, with their cosine distances", async () => {
      const set: Record<string, number[]> = {
        a: [1, 0, 0, 0],
        b: [0.9, 0.1, 0, 0],
        c: [0.5, 0.5, 0, 0],
        d: [0, 1, 0, 0],
        e: [0, 0, 1, 0.2],
        f: [-1, 0, 0, 0],
      };
      for (const [text, embedding] of Object.entries(set)) {
        await putMemory(db, tenantA, { namespace: "order", text, embedding, embeddingModel: MODEL });
      }
      // Same vectors under another model and in another namespace: never candidates.
      await putMemory(db, tenantA, {
        namespace: "order",
        text: "other-model",
        embedding: [1, 0, 0, 0],
        embeddingModel: "x",
      });
      await putMemory(db, tenantA, {
        namespace: "elsewhere",
        text: "other-ns",
        embedding: [1, 0, 0, 0],
        embeddingModel: MODEL,
      });
      await ensureVectorIndex(db, 4);

      const query = [1, 0.05, 0, 0];
      const expectedOrder = Object.keys(set).sort(
        (x, y) => cosineDistance(set[x]!, query) - cosineDistance(set[y]!, query),
      );
      expect(expectedOrder).toEqual(["a", "b", "c", "d", "e", "f"]);

      const all = await searchMemories(db, tenantA, {
        namespace: "order",
        embedding: query,
        embeddingModel: MODEL,
        k: 10,
      });
      expect(all.map((m) => m.memory.text)).toEqual(expectedOrder);
      for (const m of all) {
        expect(m.distance).toBeCloseTo(cosineDistance(set[m.memory.text]!, query), 5);
      }

      const top3 = await searchMemories(db, tenantA, {
        namespace: "order",
        embedding: query,
        embeddingModel: MODEL,
        k: 3,
      });
      expect(top3.map((m) => m.memory.text)).toEqual(["a", "b", "c"]);

      // Scale does not matter (cosine), and maxDistance bounds the result.
      const near = await searchMemories(db, tenantA, {
        namespace: "order",
        embedding: query.map((x) => x * 7),
        embeddingModel: MODEL,
        k: 10,
        maxDistance: 0.5,
      });
      expect(near.map((m) => m.memory.text)).toEqual(["a", "b", "c"]);
    });

    it("filters by metadata containment", async () => {
      await putMemory(db, tenantA, {
        namespace: "filter",
        text: "pref-1",
        metadata: { kind: "preference", tags: ["food", "travel"] },
        embedding: [1, 0, 0, 0],
        embeddingModel: MODEL,
      });
      await putMemory(db, tenantA, {
        namespace: "filter",
        text: "fact-1",
        metadata: { kind: "fact" },
        embedding: [1, 0.1, 0, 0],
        embeddingModel: MODEL,
      });
      const prefs = await searchMemories(db, tenantA, {
        namespace: "filter",
        embedding: [1, 0.1, 0, 0],
        embeddingModel: MODEL,
        k: 5,
        filter: { tags: ["travel"] },
      });
      expect(prefs.map((m) => m.memory.text)).toEqual(["pref-1"]);
    });

    it("k above 40 returns k results (HNSW ef_search is raised per query)", async () => {
      const dims = 8;
      await ensureVectorIndex(db, dims);
      const vectors = Array.from({ length: 150 }, (_, i) => pseudoVector(i + 1, dims));
      for (const [i, embedding] of vectors.entries()) {
        await putMemory(db, tenantA, {
          namespace: "many",
          text: `m${i}`,
          embedding,
          embeddingModel: "test:many@8",
        });
      }
      const query = pseudoVector(9999, dims);
      // On pgvector: through the HNSW index (exactBelow 0, and no seq scan or
      // sort allowed), where ef_search must be raised for k > 40.
      const got = await searchMemories(forcedIndexDb(db), tenantA, {
        namespace: "many",
        embedding: query,
        embeddingModel: "test:many@8",
        k: 100,
        exactBelow: 0,
      });
      expect(got).toHaveLength(100);
      const distances = got.map((m) => m.distance);
      expect([...distances].sort((x, y) => x - y)).toEqual(distances);
      const exact = vectors
        .map((v, i) => ({ text: `m${i}`, d: cosineDistance(v, query) }))
        .sort((x, y) => x.d - y.d)
        .slice(0, 100)
        .map((x) => x.text);
      const overlap = got.filter((m) => exact.includes(m.memory.text)).length;
      // Exact search is exact; HNSW over 150 points with ef_search 200 is too, in practice.
      expect(overlap).toBeGreaterThanOrEqual(backend === "exact" ? 100 : 95);
    });

    it("isolates tenants: B never sees, changes or finds A's memories", async () => {
      const { memory } = await putMemory(db, tenantA, {
        namespace: "shared-name",
        key: "secret",
        text: "A's secret",
        embedding: [0, 0, 0, 1],
        embeddingModel: MODEL,
      });
      await expect(getMemory(db, tenantB, { id: memory.id })).rejects.toSatisfy((e) =>
        isCapstanError(e, "not_found"),
      );
      await expect(getMemory(db, tenantB, { namespace: "shared-name", key: "secret" })).rejects.toSatisfy(
        (e) => isCapstanError(e, "not_found"),
      );
      expect((await listMemories(db, tenantB, { namespace: "shared-name", limit: 10 })).memories).toEqual([]);
      expect(
        await searchMemories(db, tenantB, {
          namespace: "shared-name",
          embedding: [0, 0, 0, 1],
          embeddingModel: MODEL,
          k: 10,
        }),
      ).toEqual([]);
      expect(await deleteMemory(db, tenantB, { id: memory.id })).toBe(false);
      expect(await deleteMemory(db, tenantB, { namespace: "shared-name", key: "secret" })).toBe(false);
      // B writing the same namespace and key makes B's own row; A's is untouched.
      const b = await putMemory(db, tenantB, {
        namespace: "shared-name",
        key: "secret",
        text: "B's",
        embedding: [0, 0, 0, 1],
        embeddingModel: MODEL,
      });
      expect(b.created).toBe(true);
      expect(b.memory.id).not.toBe(memory.id);
      expect((await getMemory(db, tenantA, { id: memory.id })).text).toBe("A's secret");
      const found = await searchMemories(db, tenantB, {
        namespace: "shared-name",
        embedding: [0, 0, 0, 1],
        embeddingModel: MODEL,
        k: 10,
      });
      expect(found.map((m) => m.memory.text)).toEqual(["B's"]);
    });

    it("upserts by key: same id, new text; created only the first time", async () => {
      const first = await putMemory(db, tenantA, {
        namespace: "keys",
        key: "color",
        text: "likes blue",
        embedding: [1, 0, 0, 0],
        embeddingModel: MODEL,
      });
      const second = await putMemory(db, tenantA, {
        namespace: "keys",
        key: "color",
        text: "likes green",
        metadata: { v: 2 },
        embedding: [0, 1, 0, 0],
        embeddingModel: MODEL,
      });
      expect(first.created).toBe(true);
      expect(second.created).toBe(false);
      expect(second.memory.id).toBe(first.memory.id);
      expect(second.memory.createdAt).toEqual(first.memory.createdAt);
      const got = await getMemory(db, tenantA, { namespace: "keys", key: "color" });
      expect(got).toMatchObject({ id: first.memory.id, text: "likes green", metadata: { v: 2 } });
      const hit = await searchMemories(db, tenantA, {
        namespace: "keys",
        embedding: [0, 1, 0, 0],
        embeddingModel: MODEL,
        k: 1,
      });
      expect(hit[0]?.memory.text).toBe("likes green");
      expect(hit[0]?.distance).toBeCloseTo(0, 5);
      expect(await deleteMemory(db, tenantA, { namespace: "keys", key: "color" })).toBe(true);
      expect(await deleteMemory(db, tenantA, { id: first.memory.id })).toBe(false);
    });

    it("lists a namespace in pages", async () => {
      for (let i = 0; i < 5; i++) {
        await putMemory(db, tenantA, {
          namespace: "pages",
          text: `p${i}`,
          embedding: [1, i, 0, 0],
          embeddingModel: MODEL,
        });
      }
      const all = await listMemories(db, tenantA, { namespace: "pages", limit: 100 });
      expect(all.next).toBeNull();
      expect(all.memories.map((m) => m.text).sort()).toEqual(["p0", "p1", "p2", "p3", "p4"]);
      const page1 = await listMemories(db, tenantA, { namespace: "pages", limit: 2 });
      expect(page1.next).not.toBeNull();
      // The cursor survives the deletion of the row it points after.
      await deleteMemory(db, tenantA, { id: page1.memories[1]!.id });
      const page2 = await listMemories(db, tenantA, { namespace: "pages", limit: 2, cursor: page1.next });
      const page3 = await listMemories(db, tenantA, { namespace: "pages", limit: 2, cursor: page2.next });
      expect(page3.next).toBeNull();
      expect([...page2.memories, ...page3.memories].map((m) => m.id)).toEqual(
        all.memories.slice(2).map((m) => m.id),
      );
      await expect(
        listMemories(db, tenantA, { namespace: "pages", limit: 2, cursor: "bogus" }),
      ).rejects.toSatisfy((e) => expectValidation(e, "cursor"));
    });

    it("honours TTL on every read, and expireMemories deletes expired rows", async () => {
      const short = await putMemory(db, tenantA, {
        namespace: "ttl",
        key: "short",
        text: "short-lived",
        embedding: [1, 0, 0, 0],
        embeddingModel: MODEL,
        ttlMs: 1,
      });
      const long = await putMemory(db, tenantA, {
        namespace: "ttl",
        text: "long-lived",
        embedding: [1, 0, 0, 0],
        embeddingModel: MODEL,
        ttlMs: 3_600_000,
      });
      expect(short.memory.expiresAt).not.toBeNull();
      await sleep(20);
      await expect(getMemory(db, tenantA, { id: short.memory.id })).rejects.toSatisfy((e) =>
        isCapstanError(e, "not_found"),
      );
      expect(
        (await listMemories(db, tenantA, { namespace: "ttl", limit: 10 })).memories.map((m) => m.text),
      ).toEqual(["long-lived"]);
      const found = await searchMemories(db, tenantA, {
        namespace: "ttl",
        embedding: [1, 0, 0, 0],
        embeddingModel: MODEL,
        k: 10,
      });
      expect(found.map((m) => m.memory.text)).toEqual(["long-lived"]);

      // Still stored until expired rows are reclaimed.
      const raw = (q: Queryable, id: string) => q.query("SELECT 1 FROM memories WHERE id = $1", [id]);
      expect((await raw(db, short.memory.id)).rows).toHaveLength(1);
      expect(await expireMemories(db)).toBeGreaterThanOrEqual(1);
      expect((await raw(db, short.memory.id)).rows).toHaveLength(0);
      expect((await raw(db, long.memory.id)).rows).toHaveLength(1);

      // Writing the key again revives it as a new memory.
      const again = await putMemory(db, tenantA, {
        namespace: "ttl",
        key: "short",
        text: "back",
        embedding: [1, 0, 0, 0],
        embeddingModel: MODEL,
      });
      expect(again.created).toBe(true);
      expect(again.memory.expiresAt).toBeNull();
    });

    it("refuses out-of-bounds input with validation_failed and the field", async () => {
      const base = { namespace: "v", text: "t", embedding: [1, 0, 0, 0], embeddingModel: MODEL };
      await expect(
        putMemory(db, tenantA, { ...base, text: "x".repeat(MEMORY_LIMITS.maxTextBytes + 1) }),
      ).rejects.toSatisfy((e) => expectValidation(e, "text"));
      // 32 KiB is bytes, not characters: 11,000 three-byte characters are too many.
      await expect(putMemory(db, tenantA, { ...base, text: "€".repeat(11_000) })).rejects.toSatisfy((e) =>
        expectValidation(e, "text"),
      );
      await expect(
        putMemory(db, tenantA, { ...base, metadata: { blob: "y".repeat(MEMORY_LIMITS.maxMetadataBytes) } }),
      ).rejects.toSatisfy((e) => expectValidation(e, "metadata"));
      await expect(putMemory(db, tenantA, { ...base, embedding: [0, 0, 0, 0] })).rejects.toSatisfy((e) =>
        expectValidation(e, "embedding"),
      );
      await expect(putMemory(db, tenantA, { ...base, embedding: [1, Number.NaN, 0, 0] })).rejects.toSatisfy(
        (e) => expectValidation(e, "embedding"),
      );
      await expect(putMemory(db, tenantA, { ...base, namespace: "" })).rejects.toSatisfy((e) =>
        expectValidation(e, "namespace"),
      );
      await expect(putMemory(db, tenantA, { ...base, ttlMs: -5 })).rejects.toSatisfy((e) =>
        expectValidation(e, "ttlMs"),
      );
      const search = { namespace: "v", embedding: [1, 0, 0, 0], embeddingModel: MODEL };
      await expect(searchMemories(db, tenantA, { ...search, k: MEMORY_LIMITS.maxK + 1 })).rejects.toSatisfy(
        (e) => expectValidation(e, "k"),
      );
      await expect(searchMemories(db, tenantA, { ...search, k: 0 })).rejects.toSatisfy((e) =>
        expectValidation(e, "k"),
      );
      await expect(getMemory(db, tenantA, { id: "not-a-uuid" })).rejects.toSatisfy((e) =>
        expectValidation(e, "id"),
      );
      // At the limits exactly: accepted.
      await putMemory(db, tenantA, { ...base, text: "x".repeat(MEMORY_LIMITS.maxTextBytes) });
      await searchMemories(db, tenantA, { ...search, k: MEMORY_LIMITS.maxK });
    });

    it("deletes a tenant's memories with the tenant", async () => {
      const t = (await ensureTenant(db, "mem-doomed")).id;
      await putMemory(db, t, { namespace: "n", text: "bye", embedding: [1, 0, 0, 0], embeddingModel: MODEL });
      await db.query("DELETE FROM tenants WHERE id = $1", [t]);
      const r = await db.query("SELECT count(*)::int AS n FROM memories WHERE tenant_id = $1", [t]);
      expect(r.rows[0]).toEqual({ n: 0 });
    });

    it("uses the HNSW index when pgvector is there (and filters do not starve it)", async () => {
      if (backend !== "pgvector") {
        expect(await ensureVectorIndex(db, 4)).toBe(false);
        return;
      }
      expect(await ensureVectorIndex(db, 4)).toBe(true);
      const idx = await db.query("SELECT indexdef FROM pg_indexes WHERE indexname = $1", [
        vectorIndexName(4),
      ]);
      expect(idx.rows[0]?.indexdef).toMatch(/USING hnsw .*vector_cosine_ops.*WHERE \(dims = 4\)/);

      // Tenant B has 300 memories nearer to the query than A's three. Forced
      // onto the HNSW index (no seq scan, no sort), a plain scan would see only
      // ef_search candidates, all B's; the per-query settings keep it going.
      for (let i = 0; i < 300; i++) {
        await putMemory(db, tenantB, {
          namespace: "crowd",
          text: `b${i}`,
          embedding: [1, 0.001 * i, 0, 0],
          embeddingModel: MODEL,
        });
      }
      for (const [i, e] of [
        [0.5, 0.5, 0, 0],
        [0.4, 0.6, 0, 0],
        [0.3, 0.6, 0.1, 0],
      ].entries()) {
        await putMemory(db, tenantA, {
          namespace: "crowd",
          text: `a${i}`,
          embedding: e,
          embeddingModel: MODEL,
        });
      }
      const captured: Captured[] = [];
      const forced = forcedIndexDb(db, captured);
      const got = await searchMemories(forced, tenantA, {
        namespace: "crowd",
        embedding: [1, 0, 0, 0],
        embeddingModel: MODEL,
        k: 3,
        exactBelow: 0,
      });
      expect(got.map((m) => m.memory.text).sort()).toEqual(["a0", "a1", "a2"]);
      const search = captured.find((c) => c.text.includes("<=>"));
      expect(search).toBeDefined();
      const explained = await db.tx(async (q) => {
        await forceIndex(q);
        const r = await q.query<{ "QUERY PLAN": string }>(`EXPLAIN ${search!.text}`, search!.params);
        return r.rows.map((row) => row["QUERY PLAN"]).join("\n");
      });
      expect(explained).toContain(`Index Scan using ${vectorIndexName(4)}`);

      // By default a namespace this small is scanned exactly, even when the
      // planner would rather use the index.
      captured.length = 0;
      const exact = await searchMemories(forced, tenantA, {
        namespace: "crowd",
        embedding: [1, 0, 0, 0],
        embeddingModel: MODEL,
        k: 3,
      });
      expect(exact.map((m) => m.memory.text)).toEqual(["a0", "a1", "a2"]);
      const small = captured.find((c) => c.text.includes("<=>"));
      const smallPlan = await db.tx(async (q) => {
        await forceIndex(q);
        const r = await q.query<{ "QUERY PLAN": string }>(`EXPLAIN ${small!.text}`, small!.params);
        return r.rows.map((row) => row["QUERY PLAN"]).join("\n");
      });
      expect(smallPlan).not.toContain(vectorIndexName(4));
    });
  });
}
