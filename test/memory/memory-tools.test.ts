import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { localLexicalEmbedder } from "../../src/agent/embeddings.js";
import { memoryTools, recallForPrompt, rememberKey, renderRecalled } from "../../src/agent/memory-tools.js";
import type { ToolContext } from "../../src/agent/types.js";
import { silentLogger } from "../../src/logger.js";
import { listMemories } from "../../src/state/memories.js";
import { ensureTenant } from "../../src/state/tenants.js";
import { createTestDb, type TestDb } from "../support/pg.js";

let t: TestDb;
let tenantId: string;
beforeAll(async () => {
  t = await createTestDb();
  tenantId = (await ensureTenant(t.db, "tools")).id;
});
afterAll(async () => {
  await t?.drop();
});

function ctx(over: Partial<ToolContext> = {}): ToolContext {
  const runId = over.runId ?? randomUUID();
  return {
    idempotencyKey: `${runId}:1`,
    fencingToken: 1,
    signal: new AbortController().signal,
    runId,
    threadId: randomUUID(),
    tenantId,
    toolCallId: "call-1",
    logger: silentLogger(),
    invalidate: async () => {},
    ...over,
  };
}

describe("memory tools", () => {
  const embedder = localLexicalEmbedder(128);

  it("are a pure recall and an idempotent remember, with model-facing schemas", () => {
    const { remember, recall } = memoryTools({ db: t.db, embedder });
    expect(remember.effect).toBe("idempotent");
    expect(recall.effect).toBe("pure");
    expect(remember.input.safeParse({ text: "" }).success).toBe(false);
    expect(remember.input.safeParse({ text: "likes tea", tags: ["drink"] }).success).toBe(true);
    expect(recall.input.safeParse({ query: "tea", k: 21 }).success).toBe(false);
  });

  it("remember retried with the same idempotency key stores one memory; recall finds it first", async () => {
    const { remember, recall } = memoryTools({ db: t.db, embedder });
    const c = ctx();
    const a = await remember.run({ text: "The user's favourite colour is green", tags: ["pref"] }, c);
    const b = await remember.run({ text: "The user's favourite colour is green", tags: ["pref"] }, c); // a retry
    expect(b.id).toBe(a.id);
    await remember.run({ text: "The user lives in Lisbon" }, { ...c, idempotencyKey: `${c.runId}:3` });
    await remember.run({ text: "The user has two dogs" }, { ...c, idempotencyKey: `${c.runId}:5` });

    const stored = (await listMemories(t.db, tenantId, { namespace: `thread:${c.threadId}`, limit: 10 }))
      .memories;
    expect(stored).toHaveLength(3);
    expect(stored.find((m) => m.id === a.id)).toMatchObject({
      key: rememberKey(c),
      embeddingModel: embedder.id,
      metadata: { source: "remember", runId: c.runId, threadId: c.threadId, tags: ["pref"] },
    });

    const out = await recall.run({ query: "what is the favourite colour?" }, c);
    expect(out.memories[0]).toMatchObject({
      id: a.id,
      text: "The user's favourite colour is green",
      tags: ["pref"],
    });
    expect(out.memories).toHaveLength(3);
    const one = await recall.run({ query: "dogs", k: 1 }, c);
    expect(one.memories.map((m) => m.text)).toEqual(["The user has two dogs"]);
  });

  it("by default a thread's memories stay in that thread; a resolver can share them per end user", async () => {
    const perThread = memoryTools({ db: t.db, embedder });
    const c1 = ctx();
    await perThread.remember.run({ text: "allergic to peanuts" }, c1);
    const c2 = ctx();
    expect((await perThread.recall.run({ query: "peanuts" }, c2)).memories).toEqual([]);

    const perUser = memoryTools({ db: t.db, embedder, namespace: () => "user:42" });
    await perUser.remember.run({ text: "allergic to shellfish" }, c1);
    const found = await perUser.recall.run({ query: "shellfish allergy" }, c2);
    expect(found.memories.map((m) => m.text)).toEqual(["allergic to shellfish"]);

    // Another tenant with the same namespace sees nothing.
    const other = (await ensureTenant(t.db, "tools-other")).id;
    expect((await perUser.recall.run({ query: "shellfish" }, ctx({ tenantId: other }))).memories).toEqual([]);
  });

  it("remember honours a TTL", async () => {
    const { remember, recall } = memoryTools({ db: t.db, embedder, ttlMs: 1 });
    const c = ctx();
    await remember.run({ text: "a passing thought" }, c);
    await new Promise((r) => setTimeout(r, 20));
    expect((await recall.run({ query: "passing thought" }, c)).memories).toEqual([]);
  });

  it("recallForPrompt finds the nearest memories for a user message; renderRecalled makes the prompt block", async () => {
    const perUser = memoryTools({ db: t.db, embedder, namespace: () => "user:prompt" });
    const c = ctx();
    await perUser.remember.run({ text: "Prefers answers in French" }, c);
    await perUser.remember.run(
      { text: "Works as a nurse\nat night" },
      { ...c, idempotencyKey: `${c.runId}:9` },
    );
    const matches = await recallForPrompt({
      db: t.db,
      embedder,
      tenantId,
      namespace: "user:prompt",
      query: "Can you answer in French please?",
      k: 2,
    });
    expect(matches.map((m) => m.memory.text)).toEqual([
      "Prefers answers in French",
      "Works as a nurse\nat night",
    ]);
    expect(renderRecalled(matches)).toBe(
      "Relevant long-term memories (most relevant first; they may be outdated):\n" +
        "- Prefers answers in French\n- Works as a nurse at night",
    );
    expect(renderRecalled([])).toBeNull();
    expect(
      await recallForPrompt({ db: t.db, embedder, tenantId, namespace: "user:prompt", query: "  ", k: 2 }),
    ).toEqual([]);
  });
});
