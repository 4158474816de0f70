/**
 * Embedders: text → vectors for long-term memory (src/state/memories.ts).
 *
 * - `openai:<model>`: OpenAI embeddings through the AI SDK (`embedMany`).
 * - `compatible:<model>@<dims>`: any OpenAI-compatible `/embeddings` server
 *   (Ollama, vLLM, LM Studio…) at `models.compatible.baseURL`.
 * - `local:lexical`: a deterministic, offline embedding for tests and the
 *   demo. It is LEXICAL, not semantic: texts are near when they share words
 *   or word fragments; synonyms and paraphrases with different words are not.
 *
 * An optional `@<dims>` suffix picks the dimension (`local:lexical@512`,
 * `openai:text-embedding-3-large@1024`, which OpenAI's v3 models shorten to on
 * request); it is required for `compatible:` models, whose dims nobody can
 * know in advance. Every vector an embedder returns has exactly `dims`
 * numbers (checked), and `id` names model and dims, so memories embedded by
 * different models or sizes are never compared (memories.ts scopes searches
 * to one `embeddingModel`).
 */
import { createHash } from "node:crypto";
import { embedMany, type EmbeddingModel } from "ai";
import type { KvCache } from "../coord/types.js";
import { CapstanError } from "../errors.js";
import type { ModelProviderSettings } from "./types.js";

export interface Embedder {
  /** Stable name of model and dims, stored with every memory (e.g. "openai:text-embedding-3-small@1536"). */
  readonly id: string;
  readonly dims: number;
  /** One vector of `dims` numbers per text, in order. [] for []. */
  embed(texts: string[], signal?: AbortSignal): Promise<number[][]>;
}

export interface EmbedderOptions {
  /** Max texts per provider request. Default 128. */
  maxBatchSize?: number;
  /**
   * Max characters per provider request (about 4 per token). Default
   * 400000, under OpenAI's 300k-tokens-per-request cap for any text mix.
   */
  maxBatchChars?: number;
  /** Retries per request (AI SDK, with backoff). Default 2. */
  maxRetries?: number;
}

export const EMBEDDING_PROVIDERS = ["openai", "compatible", "local"] as const;

/** Native dims of OpenAI's embedding models; the v3 ones can be shortened. */
const OPENAI_DIMS: Record<string, { dims: number; shortenable: boolean }> = {
  "text-embedding-3-small": { dims: 1536, shortenable: true },
  "text-embedding-3-large": { dims: 3072, shortenable: true },
  "text-embedding-ada-002": { dims: 1536, shortenable: false },
};

export const DEFAULT_LEXICAL_DIMS = 256;
const MAX_DIMS = 16_000;

function configInvalid(message: string): never {
  throw new CapstanError("config_invalid", message);
}

/** Splits `provider:model[@dims]`. */
export function parseEmbedderSpec(spec: string): {
  provider: (typeof EMBEDDING_PROVIDERS)[number];
  model: string;
  dims: number | null;
} {
  const colon = spec.indexOf(":");
  const provider = colon < 0 ? "" : spec.slice(0, colon);
  let model = colon < 0 ? "" : spec.slice(colon + 1);
  let dims: number | null = null;
  const at = /@(\d+)$/.exec(model);
  if (at) {
    dims = Number(at[1]);
    model = model.slice(0, at.index);
    if (!Number.isSafeInteger(dims) || dims < 1 || dims > MAX_DIMS) {
      configInvalid(`embedding model "${spec}": dims must be 1..${MAX_DIMS}`);
    }
  }
  if (!(EMBEDDING_PROVIDERS as readonly string[]).includes(provider) || model.trim() === "") {
    configInvalid(
      `invalid embedding model "${spec}": expected "<provider>:<model>[@dims]" with provider one of ` +
        `${EMBEDDING_PROVIDERS.map((p) => `"${p}"`).join(", ")} (e.g. "openai:text-embedding-3-small", ` +
        `"compatible:nomic-embed-text@768", "local:lexical")`,
    );
  }
  return { provider: provider as (typeof EMBEDDING_PROVIDERS)[number], model, dims };
}

/**
 * Resolves an embedding model spec. Throws `config_invalid` with what to fix
 * (unknown provider, missing dims, missing base URL).
 */
export function resolveEmbedder(
  spec: string,
  providers: ModelProviderSettings = {},
  opts: EmbedderOptions = {},
): Embedder {
  const { provider, model, dims } = parseEmbedderSpec(spec);
  switch (provider) {
    case "local": {
      if (model !== "lexical") configInvalid(`embedding model "${spec}": the only local model is "lexical"`);
      return localLexicalEmbedder(dims ?? DEFAULT_LEXICAL_DIMS);
    }
    case "openai": {
      const known = OPENAI_DIMS[model];
      if (!known && dims === null) {
        configInvalid(
          `embedding model "${spec}": unknown OpenAI model; append its dims, e.g. "${spec}@1536"`,
        );
      }
      const size = dims ?? known!.dims;
      if (known && size !== known.dims && !known.shortenable) {
        configInvalid(`embedding model "${spec}": ${model} only produces ${known.dims} dims`);
      }
      if (known && size > known.dims) {
        configInvalid(`embedding model "${spec}": ${model} produces at most ${known.dims} dims`);
      }
      const s = providers.openai ?? {};
      // The provider SDK is imported on the first embed call: a process loads only what it uses.
      const m = async () => {
        const { createOpenAI } = await import("@ai-sdk/openai");
        return createOpenAI({ apiKey: s.apiKey, baseURL: s.baseURL }).embedding(model);
      };
      // Ask for shortened vectors only when they differ from the native size.
      const providerOptions = known && size !== known.dims ? { openai: { dimensions: size } } : undefined;
      return sdkEmbedder(`openai:${model}@${size}`, size, m, providerOptions, opts);
    }
    case "compatible": {
      if (dims === null) {
        configInvalid(
          `embedding model "${spec}": compatible servers do not say their dims in advance; ` +
            `append them, e.g. "${spec}@768" (nomic-embed-text) or "${spec}@1024" (mxbai-embed-large)`,
        );
      }
      const s = providers.compatible ?? {};
      if (s.baseURL === undefined || s.baseURL.trim() === "") {
        configInvalid(
          `embedding model "${spec}" needs the base URL of an OpenAI-compatible server: set ` +
            `models.compatible.baseURL (e.g. "http://127.0.0.1:11434/v1" for Ollama)`,
        );
      }
      const baseURL = s.baseURL;
      const m = async () => {
        const { createOpenAICompatible } = await import("@ai-sdk/openai-compatible");
        return createOpenAICompatible({
          name: s.name ?? "compatible",
          baseURL,
          apiKey: s.apiKey,
          headers: s.headers,
        }).embeddingModel(model);
      };
      return sdkEmbedder(`compatible:${model}@${dims}`, dims, m, undefined, opts);
    }
  }
}

type ProviderOptions = Parameters<typeof embedMany>[0]["providerOptions"];

/**
 * An embedder over an AI SDK embedding model (or a loader of one, called on
 * the first embed and again after it failed): batched requests, dims checked.
 */
export function sdkEmbedder(
  id: string,
  dims: number,
  modelOrLoader: EmbeddingModel | (() => Promise<EmbeddingModel>),
  providerOptions: ProviderOptions,
  opts: EmbedderOptions = {},
): Embedder {
  const maxBatchSize = opts.maxBatchSize ?? 128;
  const maxBatchChars = opts.maxBatchChars ?? 400_000;
  let loaded: Promise<EmbeddingModel> | undefined;
  const getModel = (): Promise<EmbeddingModel> =>
    typeof modelOrLoader === "function"
      ? (loaded ??= modelOrLoader().catch((err: unknown) => {
          loaded = undefined;
          throw err;
        }))
      : Promise.resolve(modelOrLoader);
  return {
    id,
    dims,
    async embed(texts, signal) {
      const model = await getModel();
      const out: number[][] = [];
      for (const batch of batches(texts, maxBatchSize, maxBatchChars)) {
        signal?.throwIfAborted();
        const r = await embedMany({
          model,
          values: batch,
          abortSignal: signal,
          maxRetries: opts.maxRetries ?? 2,
          providerOptions,
        });
        for (const e of r.embeddings) {
          if (e.length !== dims) {
            configInvalid(
              `embedding model ${id} returned ${e.length} dims, expected ${dims}: fix the "@dims" of the spec`,
            );
          }
          out.push(e);
        }
      }
      if (out.length !== texts.length) {
        throw new CapstanError("internal", `embedding model ${id} returned ${out.length} of ${texts.length}`);
      }
      return out;
    },
  };
}

/** Greedy split into requests of at most `maxCount` texts and `maxChars` characters (a longer text goes alone). */
function batches(texts: string[], maxCount: number, maxChars: number): string[][] {
  const out: string[][] = [];
  let cur: string[] = [];
  let chars = 0;
  for (const t of texts) {
    if (cur.length > 0 && (cur.length >= maxCount || chars + t.length > maxChars)) {
      out.push(cur);
      cur = [];
      chars = 0;
    }
    cur.push(t);
    chars += t.length;
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

/* ------------------------------------------------------------------------- */

/**
 * A deterministic local embedding: a hashed bag of features, L2-normalised.
 * LEXICAL, NOT SEMANTIC: "cat food" is near "food for my cat" and "cats"
 * (shared word and character trigrams) but not near "kitten chow".
 *
 * Features of NFKC-lowercased text, split into runs of letters and digits:
 * each word (weight 1) and each character trigram of "^word$" (weight 0.25,
 * so inflections and typos still overlap), counted sublinearly (1 + ln tf).
 * A feature's FNV-1a hash picks its dimension and its sign (signed hashing
 * keeps collisions from adding up). Text with no letters or digits maps to
 * one fixed vector. Same text → same vector, on every platform and version:
 * changing the algorithm requires a new id (it is stored with memories).
 */
export function localLexicalEmbedder(dims = DEFAULT_LEXICAL_DIMS): Embedder {
  if (!Number.isSafeInteger(dims) || dims < 1 || dims > MAX_DIMS) {
    configInvalid(`local:lexical dims must be 1..${MAX_DIMS} (got ${dims})`);
  }
  return {
    id: `local:lexical-v1@${dims}`,
    dims,
    async embed(texts, signal) {
      signal?.throwIfAborted();
      return texts.map((t) => lexicalVector(t, dims));
    },
  };
}

const WORD = /[\p{L}\p{N}]+/gu;

function lexicalVector(text: string, dims: number): number[] {
  // feature → occurrences; "w:" words weigh 1, "t:" trigrams 0.25.
  const counts = new Map<string, number>();
  const add = (f: string) => counts.set(f, (counts.get(f) ?? 0) + 1);
  for (const m of text.normalize("NFKC").toLowerCase().matchAll(WORD)) {
    const word = m[0];
    add("w:" + word);
    const chars = Array.from("^" + word + "$");
    for (let i = 0; i + 3 <= chars.length; i++) add("t:" + chars.slice(i, i + 3).join(""));
  }
  if (counts.size === 0) counts.set("w:", 1);
  const v = new Array<number>(dims).fill(0);
  for (const [feature, tf] of counts) {
    const weight = (feature.startsWith("t:") ? 0.25 : 1) * (1 + Math.log(tf));
    const h = fnv1a(feature);
    const i = h % dims;
    v[i] = (v[i] ?? 0) + (fmix32(h) & 1 ? -weight : weight);
  }
  let norm = 0;
  for (const x of v) norm += x * x;
  norm = Math.sqrt(norm);
  // Colliding features with opposite signs can cancel out: fall back to a fixed unit vector.
  if (norm === 0) {
    v[0] = 1;
    return v;
  }
  return v.map((x) => x / norm);
}

/** FNV-1a over UTF-16 code units, as an unsigned 32-bit integer. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** MurmurHash3's finaliser: decorrelates the sign bit from the bucket. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/* ------------------------------------------------------------------------- */

/**
 * Wraps an embedder with a TTL cache (Redis in production): key = model id +
 * SHA-256 of the text, value = the float32 vector in base64 (results are
 * float32-rounded either way, as the database stores them). A hit skips the
 * provider; the cache failing or being flushed only costs a provider call
 * (errors are swallowed). Same id and dims as the wrapped embedder.
 */
export function cachedEmbedder(
  embedder: Embedder,
  cache: KvCache,
  ttlMs: number,
  /** Told the hits and misses of each call (metrics); must not throw. */
  onLookup?: (hits: number, misses: number) => void,
): Embedder {
  const keyOf = (text: string) =>
    `emb:v1:${embedder.id}:${createHash("sha256").update(text, "utf8").digest("hex")}`;
  return {
    id: embedder.id,
    dims: embedder.dims,
    async embed(texts, signal) {
      if (texts.length === 0) return [];
      const keys = texts.map(keyOf);
      const cached = await Promise.all(
        keys.map((k) => cache.get(k).then(decodeVector(embedder.dims), () => null)),
      );
      // Each distinct missing text is embedded once.
      const missing = [...new Set(texts.filter((_, i) => cached[i] === null))];
      const hits = cached.filter((v) => v !== null).length;
      onLookup?.(hits, texts.length - hits);
      const fresh = new Map<string, number[]>();
      if (missing.length > 0) {
        const vecs = await embedder.embed(missing, signal);
        await Promise.allSettled(
          missing.map((t, i) => {
            // Rounded to float32 like a cached value, so a text's vector does
            // not depend on whether the cache had it.
            const f = Float32Array.from(vecs[i]!);
            fresh.set(t, Array.from(f));
            return cache.set(keys[texts.indexOf(t)]!, Buffer.from(f.buffer).toString("base64"), ttlMs);
          }),
        );
      }
      return texts.map((t, i) => cached[i] ?? fresh.get(t)!);
    },
  };
}

/** A cached value as a vector of `dims`, or null (absent or corrupt: treated as a miss). */
function decodeVector(dims: number): (s: string | null) => number[] | null {
  return (s) => {
    if (s === null) return null;
    const buf = Buffer.from(s, "base64");
    if (buf.length !== dims * 4) return null;
    const f = new Float32Array(dims);
    new Uint8Array(f.buffer).set(buf);
    return Array.from(f);
  };
}
