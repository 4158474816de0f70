import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { KvCache } from "../coord/types.js";
import { isCapstanError } from "../errors.js";
import {
  cachedEmbedder,
  localLexicalEmbedder,
  parseEmbedderSpec,
  resolveEmbedder,
  type Embedder,
} from "./embeddings.js";

const dot = (a: number[], b: number[]) => a.reduce((n, x, i) => n + x * (b[i] ?? 0), 0);
const norm = (a: number[]) => Math.sqrt(dot(a, a));

/** A local OpenAI-style POST /v1/embeddings: vector i of a request is [len(text), i+1, 1, …] (dims wide). */
interface EmbeddingsServer {
  url: string;
  requests: { model: string; input: string[]; dimensions?: number }[];
  dims: number;
  close(): Promise<void>;
}

async function startEmbeddingsServer(dims: number): Promise<EmbeddingsServer> {
  const state: EmbeddingsServer = { url: "", requests: [], dims, close: async () => {} };
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      if (req.method !== "POST" || !req.url?.endsWith("/embeddings")) {
        res.writeHead(404).end();
        return;
      }
      const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as {
        model: string;
        input: string[];
        dimensions?: number;
      };
      state.requests.push(body);
      const width = body.dimensions ?? state.dims;
      const data = body.input.map((text, index) => ({
        object: "embedding",
        index,
        embedding: Array.from({ length: width }, (_, k) => (k === 0 ? text.length : k === 1 ? index + 1 : 1)),
      }));
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          object: "list",
          data,
          model: body.model,
          usage: { prompt_tokens: 1, total_tokens: 1 },
        }),
      );
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  state.close = () => new Promise<void>((r) => server.close(() => r()));
  return state;
}

describe("local:lexical", () => {
  const e = localLexicalEmbedder(256);

  it("is deterministic, unit length, and names its algorithm and dims", async () => {
    const [a, b] = await e.embed(["The cat sat on the mat", "The cat sat on the mat"]);
    expect(a).toEqual(b);
    expect(a).toHaveLength(256);
    expect(norm(a!)).toBeCloseTo(1, 10);
    expect(e.id).toBe("local:lexical-v1@256");
    // Pinned values: a change to the algorithm must change the id.
    const [v] = await localLexicalEmbedder(8).embed(["hello world"]);
    expect(v).toEqual([0.5, -0.25, 0, -0.25, 0.75, 0, -0.25, 0]);
  });

  it("puts texts sharing words (or word fragments) nearer than unrelated ones: lexical, not semantic", async () => {
    const [q, same, inflected, other, synonym] = await e.embed([
      "my favourite food is pizza",
      "pizza is my favourite food",
      "favourite foods: pizzas",
      "the quarterly stock market report",
      "I like Italian flatbread best",
    ]);
    expect(dot(q!, same!)).toBeGreaterThan(0.99);
    expect(dot(q!, inflected!)).toBeGreaterThan(dot(q!, other!) + 0.2);
    // No shared words: a synonym is as far as anything unrelated (honestly lexical).
    expect(Math.abs(dot(q!, synonym!))).toBeLessThan(0.3);
  });

  it("maps text without letters or digits to a fixed unit vector", async () => {
    const [a, b] = await e.embed(["!!!", "   "]);
    expect(a).toEqual(b);
    expect(norm(a!)).toBeCloseTo(1, 10);
    expect(await e.embed([])).toEqual([]);
  });
});

describe("resolveEmbedder", () => {
  it("parses provider:model@dims", () => {
    expect(parseEmbedderSpec("local:lexical")).toEqual({ provider: "local", model: "lexical", dims: null });
    expect(parseEmbedderSpec("compatible:nomic-embed-text@768")).toEqual({
      provider: "compatible",
      model: "nomic-embed-text",
      dims: 768,
    });
    expect(resolveEmbedder("local:lexical@64").dims).toBe(64);
    expect(resolveEmbedder("openai:text-embedding-3-small", { openai: { apiKey: "k" } })).toMatchObject({
      id: "openai:text-embedding-3-small@1536",
      dims: 1536,
    });
  });

  it("says what to fix", () => {
    const bad = (spec: string, re: RegExp) => {
      let err: unknown;
      try {
        resolveEmbedder(spec, { compatible: { baseURL: "http://127.0.0.1:1/v1" } });
      } catch (e) {
        err = e;
      }
      expect(isCapstanError(err, "config_invalid")).toBe(true);
      expect((err as Error).message).toMatch(re);
    };
    bad("cohere:embed-v3", /provider one of "openai", "compatible", "local"/);
    bad("compatible:nomic-embed-text", /append them, e\.g\. "compatible:nomic-embed-text@768"/);
    bad("openai:some-future-model", /append its dims/);
    bad("openai:text-embedding-ada-002@512", /only produces 1536/);
    bad("openai:text-embedding-3-small@4096", /at most 1536/);
    bad("local:semantic", /only local model is "lexical"/);
    bad("local:lexical@0", /dims must be/);
    expect(() => resolveEmbedder("compatible:m@8", {})).toThrow(/models\.compatible\.baseURL/);
  });
});

describe("AI SDK embedders against a local server", () => {
  let server: EmbeddingsServer;
  beforeAll(async () => {
    server = await startEmbeddingsServer(4);
  });
  afterAll(async () => {
    await server?.close();
  });

  it("compatible: batches requests and keeps the order", async () => {
    server.requests.length = 0;
    const e = resolveEmbedder(
      "compatible:tiny@4",
      { compatible: { baseURL: server.url } },
      { maxBatchSize: 3 },
    );
    expect(e.id).toBe("compatible:tiny@4");
    const texts = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff", "g"];
    const out = await e.embed(texts);
    expect(server.requests.map((r) => r.input)).toEqual([
      ["a", "bb", "ccc"],
      ["dddd", "eeeee", "ffffff"],
      ["g"],
    ]);
    expect(out.map((v) => v[0])).toEqual(texts.map((t) => t.length));
    expect(server.requests[0]!.model).toBe("tiny");
  });

  it("batches by characters too", async () => {
    server.requests.length = 0;
    const e = resolveEmbedder(
      "compatible:tiny@4",
      { compatible: { baseURL: server.url } },
      { maxBatchChars: 10 },
    );
    await e.embed(["12345", "12345", "1", "123456789012"]);
    expect(server.requests.map((r) => r.input.length)).toEqual([2, 1, 1]);
  });

  it("refuses vectors of the wrong dims", async () => {
    const e = resolveEmbedder("compatible:tiny@5", { compatible: { baseURL: server.url } });
    await expect(e.embed(["x"])).rejects.toSatisfy(
      (err) =>
        isCapstanError(err, "config_invalid") && /returned 4 dims, expected 5/.test((err as Error).message),
    );
  });

  it("openai: asks for shortened vectors only when the dims differ from the model's", async () => {
    server.requests.length = 0;
    const providers = { openai: { apiKey: "test", baseURL: server.url } };
    const short = resolveEmbedder("openai:text-embedding-3-small@4", providers);
    expect(await short.embed(["hi"])).toEqual([[2, 1, 1, 1]]);
    expect(server.requests[0]).toMatchObject({ model: "text-embedding-3-small", dimensions: 4 });
    const full = resolveEmbedder("openai:text-embedding-3-small", providers);
    await expect(full.embed(["hi"])).rejects.toThrow(/returned 4 dims, expected 1536/);
    expect(server.requests[1]!.dimensions).toBeUndefined();
  });

  it("passes the abort signal", async () => {
    const e = resolveEmbedder("compatible:tiny@4", { compatible: { baseURL: server.url } });
    await expect(e.embed(["x"], AbortSignal.abort())).rejects.toThrow();
  });
});

describe("cachedEmbedder", () => {
  function mapCache(): KvCache & { map: Map<string, string>; failGets: boolean } {
    const map = new Map<string, string>();
    const c = {
      map,
      failGets: false,
      get: async (k: string) => {
        if (c.failGets) throw new Error("redis down");
        return map.get(k) ?? null;
      },
      set: async (k: string, v: string) => {
        map.set(k, v);
      },
      setIfAbsent: async (k: string, v: string) => (map.has(k) ? false : (map.set(k, v), true)),
      delete: async (k: string) => {
        map.delete(k);
      },
      close: async () => {},
    };
    return c;
  }

  function counting(inner: Embedder): Embedder & { calls: string[][] } {
    const calls: string[][] = [];
    return {
      id: inner.id,
      dims: inner.dims,
      calls,
      embed: (texts, signal) => {
        calls.push(texts);
        return inner.embed(texts, signal);
      },
    };
  }

  it("serves repeats from the cache, embeds each missing text once, and keeps the order", async () => {
    const inner = counting(localLexicalEmbedder(32));
    const cache = mapCache();
    const lookups: [number, number][] = [];
    const e = cachedEmbedder(inner, cache, 60_000, (hits, misses) => lookups.push([hits, misses]));
    expect(e).toMatchObject({ id: inner.id, dims: 32 });
    const first = await e.embed(["a b", "c d", "a b"]);
    expect(inner.calls).toEqual([["a b", "c d"]]);
    const second = await e.embed(["c d", "e f", "a b"]);
    expect(inner.calls).toEqual([["a b", "c d"], ["e f"]]);
    expect(lookups).toEqual([
      [0, 3],
      [2, 1],
    ]); // (hits, misses) per call, as the metrics count them
    expect(second[0]).toEqual(first[1]);
    expect(second[2]).toEqual(first[0]);
    // Float32 precision (as stored) whether from the cache or not.
    const fresh = await localLexicalEmbedder(32).embed(["e f"]);
    expect(second[1]).toEqual(Array.from(Float32Array.from(fresh[0]!)));
    expect([...cache.map.keys()].every((k) => k.startsWith(`emb:v1:${inner.id}:`))).toBe(true);
  });

  it("treats a failing or corrupt cache as a miss", async () => {
    const inner = counting(localLexicalEmbedder(32));
    const cache = mapCache();
    const e = cachedEmbedder(inner, cache, 60_000);
    await e.embed(["x"]);
    for (const k of cache.map.keys()) cache.map.set(k, "bm90IGEgdmVjdG9y");
    await e.embed(["x"]);
    cache.failGets = true;
    const [v] = await e.embed(["x"]);
    expect(inner.calls).toHaveLength(3);
    expect(v).toHaveLength(32);
  });
});
