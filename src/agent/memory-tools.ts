/**
 * Built-in memory tools an agent can opt into: `remember` stores a fact in
 * long-term memory, `recall` searches it. The worker constructs them (they
 * need the database), so a config file only opts in.
 *
 * Crash safety (docs/architecture.md#tools-and-effects): the worker journals these calls like any tool.
 * - `remember` is "idempotent": it upserts the memory keyed by the call's
 *   idempotency key (stable per run and tool call across retries and
 *   workers), so re-running it after a crash rewrites the same row instead
 *   of adding a duplicate.
 * - `recall` is "pure": it only reads. (A cache of pure tool results would
 *   hide memories written after the cached call; do not cache it for long.)
 *
 * `recallForPrompt` + `renderRecalled` are the automatic recall an agent's
 * `memory: { recall }` setting does before an LLM call.
 */
import { z } from "zod";
import type { Db } from "../state/db.js";
import { MEMORY_LIMITS, putMemory, searchMemories, type MemoryMatch } from "../state/memories.js";
import { tool } from "./define.js";
import type { Embedder } from "./embeddings.js";
import type { ToolContext, ToolDefinition } from "./types.js";

export interface MemoryToolsOptions {
  db: Db;
  embedder: Embedder;
  /**
   * The namespace a call reads and writes, e.g. per end user from the
   * thread's metadata. Default: one namespace per thread (`thread:<id>`),
   * the only default that cannot leak one end user's memories to another.
   */
  namespace?: (ctx: ToolContext) => string | Promise<string>;
  /** Lifetime of memories written by `remember` (ms); default: no expiry. */
  ttlMs?: number | null;
  /** Results of `recall` when the model does not say. Default 5. */
  defaultK?: number;
  /** Most results the model may ask `recall` for. Default 20 (at most MEMORY_LIMITS.maxK). */
  maxK?: number;
  /** Per-call timeout (ms): embedding is a provider call. Default 30000. */
  timeoutMs?: number;
}

export const threadNamespace = (ctx: ToolContext): string => `thread:${ctx.threadId}`;

/** The memory key of a `remember` call: one row per tool call, whatever the retries. */
export const rememberKey = (ctx: ToolContext): string => `remember:${ctx.idempotencyKey}`;

const rememberInput = z.object({
  text: z
    .string()
    .min(1)
    .max(4000)
    .describe("The fact to remember, self-contained (it will be read later without this conversation)."),
  tags: z.array(z.string().min(1).max(64)).max(10).optional().describe("Optional short labels."),
});

export interface RememberOutput {
  id: string;
  stored: true;
}

export interface RecallOutput {
  memories: { id: string; text: string; distance: number; createdAt: string; tags?: string[] }[];
}

export function memoryTools(opts: MemoryToolsOptions): {
  remember: ToolDefinition<typeof rememberInput, RememberOutput>;
  recall: ToolDefinition<ReturnType<typeof recallInputSchema>, RecallOutput>;
} {
  const { db, embedder } = opts;
  const namespaceOf = opts.namespace ?? threadNamespace;
  const maxK = Math.min(opts.maxK ?? 20, MEMORY_LIMITS.maxK);
  const defaultK = Math.min(opts.defaultK ?? 5, maxK);
  const timeoutMs = opts.timeoutMs ?? 30_000;

  const remember = tool({
    description:
      "Store a fact in long-term memory so it can be recalled in later conversations " +
      "(e.g. a user's stated preference). Store one self-contained fact per call.",
    input: rememberInput,
    effect: "idempotent",
    timeoutMs,
    async run(args, ctx): Promise<RememberOutput> {
      const [embedding] = await embedder.embed([args.text], ctx.signal);
      const { memory } = await putMemory(db, ctx.tenantId, {
        namespace: await namespaceOf(ctx),
        key: rememberKey(ctx),
        text: args.text,
        metadata: {
          source: "remember",
          runId: ctx.runId,
          threadId: ctx.threadId,
          ...(args.tags && args.tags.length > 0 ? { tags: args.tags } : {}),
        },
        embedding: embedding!,
        embeddingModel: embedder.id,
        ttlMs: opts.ttlMs ?? null,
      });
      return { id: memory.id, stored: true };
    },
  });

  const recall = tool({
    description:
      "Search long-term memory for facts relevant to a query; returns the closest memories, " +
      "nearest first (distance 0 = same meaning, larger = less related).",
    input: recallInputSchema(maxK),
    effect: "pure",
    timeoutMs,
    async run(args, ctx): Promise<RecallOutput> {
      const [embedding] = await embedder.embed([args.query], ctx.signal);
      const matches = await searchMemories(db, ctx.tenantId, {
        namespace: await namespaceOf(ctx),
        embedding: embedding!,
        embeddingModel: embedder.id,
        k: args.k ?? defaultK,
      });
      return {
        memories: matches.map((m) => {
          const tags = m.memory.metadata.tags;
          return {
            id: m.memory.id,
            text: m.memory.text,
            distance: Math.round(m.distance * 1e4) / 1e4,
            createdAt: m.memory.createdAt.toISOString(),
            ...(Array.isArray(tags) ? { tags: tags.filter((t): t is string => typeof t === "string") } : {}),
          };
        }),
      };
    },
  });

  return { remember, recall };
}

function recallInputSchema(maxK: number) {
  return z.object({
    query: z.string().min(1).max(4000).describe("What to look for, in a few words or a question."),
    k: z.number().int().min(1).max(maxK).optional().describe(`How many memories (1..${maxK}).`),
  });
}

/** Longest query text embedded for automatic recall (characters). */
const MAX_RECALL_QUERY_CHARS = 8000;

/**
 * Automatic recall before an LLM call: the k memories of `namespace` nearest
 * to `query` (typically the latest user message). Reads only, so it needs no
 * journaling: its result only shapes a prompt whose response is journaled.
 */
export async function recallForPrompt(opts: {
  db: Db;
  embedder: Embedder;
  tenantId: string;
  namespace: string;
  query: string;
  k: number;
  maxDistance?: number | null;
  signal?: AbortSignal;
}): Promise<MemoryMatch[]> {
  const query = opts.query.trim().slice(0, MAX_RECALL_QUERY_CHARS);
  if (query === "") return [];
  const [embedding] = await opts.embedder.embed([query], opts.signal);
  return searchMemories(opts.db, opts.tenantId, {
    namespace: opts.namespace,
    embedding: embedding!,
    embeddingModel: opts.embedder.id,
    k: opts.k,
    maxDistance: opts.maxDistance ?? null,
  });
}

/** Recalled memories as a block of prompt text (nearest first), or null when there are none. */
export function renderRecalled(matches: readonly MemoryMatch[]): string | null {
  if (matches.length === 0) return null;
  return (
    "Relevant long-term memories (most relevant first; they may be outdated):\n" +
    matches.map((m) => `- ${m.memory.text.replace(/\s*\n\s*/g, " ")}`).join("\n")
  );
}
