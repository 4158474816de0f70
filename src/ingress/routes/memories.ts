import type { FastifyInstance, FastifyReply } from "fastify";
import { z } from "zod";
import type { Embedder } from "../../agent/embeddings.js";
import { CapstanError, isCapstanError } from "../../errors.js";
import type { Db } from "../../state/db.js";
import { withIdempotencyKey, type IdempotencyScope, type StoredResponse } from "../../state/idempotency.js";
import {
  deleteMemory,
  getMemory,
  listMemories,
  putMemory,
  searchMemories,
  type MemoryRef,
} from "../../state/memories.js";
import { principalOf, type IngressContext } from "../context.js";
import { idempotencyKeyOf, requestHash } from "../idempotency.js";
import {
  createMemoryBody,
  LIMITS,
  listMemoriesQuery,
  memoryKeySchema,
  memoryNamespaceSchema,
  putMemoryBody,
  searchMemoriesBody,
  type MemoryJson,
  type MemoryPageJson,
  type MemorySearchResultJson,
} from "../schemas.js";
import { parseOr400, pathId } from "../validate.js";
import { memoryMatchView, memoryView } from "../views.js";

export interface MemoryRouteOptions {
  /**
   * Embeds memory texts and search queries; its `id` is stored with every
   * memory (searches compare only vectors of the same model). Without one,
   * every memory route answers 501 `not_implemented`.
   */
  embedder?: Embedder;
  /** Longest wait for the embedding model per request. Default 30,000 ms. */
  embedTimeoutMs?: number;
}

const keyParams = z.object({ namespace: memoryNamespaceSchema, key: memoryKeySchema });

/**
 * The store (src/state/memories.ts) checks its inputs again and names fields
 * its own way; requests are validated before they reach it, but should one of
 * its checks fire, the problem names the request's field.
 */
const STORE_FIELDS: Record<string, string> = {
  ttlMs: "ttl_seconds",
  maxDistance: "max_distance",
  limit: "query.limit",
  cursor: "query.cursor",
};

async function storeCall<T>(work: Promise<T>, location: "body" | "query"): Promise<T> {
  try {
    return await work;
  } catch (err) {
    if (!isCapstanError(err, "validation_failed") || !err.fields) throw err;
    const fields = err.fields.map((f) => ({
      field: STORE_FIELDS[f.field] ?? (location === "query" ? `query.${f.field}` : f.field),
      message: f.message,
    }));
    throw new CapstanError(
      "validation_failed",
      "invalid request: " + fields.map((f) => `${f.field}: ${f.message}`).join("; "),
      { fields },
    );
  }
}

const NOT_STORED = new Error("no stored answer for this Idempotency-Key");

/**
 * The stored answer of an earlier request with this key, or null. A keyed
 * retry is answered before the text is embedded again (the embedding is a
 * paid provider call); a key used with another request is refused (422) the
 * same way. The effect always throws, so this never stores anything.
 */
async function storedAnswer(db: Db, scope: IdempotencyScope): Promise<StoredResponse | null> {
  try {
    return (await withIdempotencyKey(db, scope, () => Promise.reject(NOT_STORED))).response;
  } catch (err) {
    if (err === NOT_STORED) return null;
    throw err;
  }
}

/**
 * Long-term memory endpoints (docs/http-api.md#memories), tenant-scoped throughout:
 * - `PUT /memories/:namespace/:key {text, metadata?, ttl_seconds?}`: upsert
 *   by key (201 created, 200 updated); `GET`/`DELETE` on the same path;
 * - `POST /memories {namespace, text, metadata?, ttl_seconds?}`: a new keyless
 *   memory (201), `Idempotency-Key` makes it safe to retry;
 * - `GET /memories/:id`, `DELETE /memories/:id` (204; 404 when absent, expired
 *   or another tenant's);
 * - `GET /memories?namespace=&limit=&cursor=`: a namespace in creation order;
 * - `POST /memories/search {namespace, query, k?, filter?, max_distance?}`:
 *   the k nearest memories to the query text, nearest first.
 * Texts are embedded here with the configured embedder, outside any
 * database transaction.
 */
export function memoryRoutes(
  app: FastifyInstance,
  ctx: Pick<IngressContext, "db" | "shutdown">,
  opts: MemoryRouteOptions = {},
): void {
  const embedTimeoutMs = opts.embedTimeoutMs ?? 30_000;

  const embedderOf = (): Embedder => {
    if (!opts.embedder) {
      throw new CapstanError(
        "not_implemented",
        "long-term memory is not available on this server: it has no embedding model configured",
      );
    }
    return opts.embedder;
  };

  /** One text's vector. A failing or slow embedding provider is a 503: retry later. */
  const embed = async (embedder: Embedder, text: string): Promise<number[]> => {
    const signal = AbortSignal.any([ctx.shutdown, AbortSignal.timeout(embedTimeoutMs)]);
    let vector: number[] | undefined;
    try {
      [vector] = await embedder.embed([text], signal);
    } catch (err) {
      if (err instanceof CapstanError) throw err;
      throw new CapstanError(
        "server_busy",
        `the embedding model did not answer (${signal.aborted ? "timed out" : "failed"}); retry shortly`,
        { cause: err },
      );
    }
    if (!vector) throw new CapstanError("internal", `embedding model ${embedder.id} returned no vector`);
    return vector;
  };

  const send = (reply: FastifyReply, response: StoredResponse, replayed: boolean) => {
    if (replayed) reply.header("idempotent-replayed", "true");
    const body = response.body as Partial<MemoryJson> | undefined;
    if (response.statusCode === 201 && typeof body?.id === "string") {
      reply.header("location", `/v1/memories/${body.id}`);
    }
    return reply.code(response.statusCode).send(response.body);
  };

  const ttlMs = (seconds: number | null | undefined): number | null =>
    seconds === undefined || seconds === null ? null : seconds * 1000;

  app.put("/memories/:namespace/:key", async (req, reply) => {
    const embedder = embedderOf();
    const { tenantId } = principalOf(req);
    const { namespace, key } = parseOr400(keyParams, req.params, "body");
    const body = parseOr400(putMemoryBody, req.body, "body");
    const embedding = await embed(embedder, body.text);
    const { memory, created } = await storeCall(
      putMemory(ctx.db, tenantId, {
        namespace,
        key,
        text: body.text,
        metadata: body.metadata ?? {},
        embedding,
        embeddingModel: embedder.id,
        ttlMs: ttlMs(body.ttl_seconds),
      }),
      "body",
    );
    return send(reply, { statusCode: created ? 201 : 200, body: memoryView(memory) }, false);
  });

  app.post("/memories", async (req, reply) => {
    const embedder = embedderOf();
    const { tenantId } = principalOf(req);
    const key = idempotencyKeyOf(req);
    const body = parseOr400(createMemoryBody, req.body, "body");
    const scope = key ? { tenantId, key, requestHash: requestHash("POST", "/v1/memories", body) } : null;
    if (scope) {
      const stored = await storedAnswer(ctx.db, scope);
      if (stored) return send(reply, stored, true);
    }
    const embedding = await embed(embedder, body.text);
    const create = async (db: Db) => {
      const { memory } = await storeCall(
        putMemory(db, tenantId, {
          namespace: body.namespace,
          text: body.text,
          metadata: body.metadata ?? {},
          embedding,
          embeddingModel: embedder.id,
          ttlMs: ttlMs(body.ttl_seconds),
        }),
        "body",
      );
      return { response: { statusCode: 201, body: memoryView(memory) } };
    };
    const out = scope
      ? await withIdempotencyKey(ctx.db, scope, create)
      : { ...(await create(ctx.db)), replayed: false };
    return send(reply, out.response, out.replayed);
  });

  app.post("/memories/search", async (req): Promise<MemorySearchResultJson> => {
    const embedder = embedderOf();
    const { tenantId } = principalOf(req);
    // Search only reads: any retry is safe. The key is validated like on
    // every POST, but no answer is stored (results would go stale, and can
    // be large).
    idempotencyKeyOf(req);
    const body = parseOr400(searchMemoriesBody, req.body, "body");
    const embedding = await embed(embedder, body.query);
    const matches = await storeCall(
      searchMemories(ctx.db, tenantId, {
        namespace: body.namespace,
        embedding,
        embeddingModel: embedder.id,
        k: body.k ?? LIMITS.memorySearchDefault,
        filter: body.filter ?? null,
        maxDistance: body.max_distance ?? null,
      }),
      "body",
    );
    return { data: matches.map(memoryMatchView) };
  });

  app.get("/memories", async (req): Promise<MemoryPageJson> => {
    embedderOf();
    const { tenantId } = principalOf(req);
    const q = parseOr400(listMemoriesQuery, req.query, "query");
    const page = await storeCall(
      listMemories(ctx.db, tenantId, {
        namespace: q.namespace,
        limit: q.limit ?? LIMITS.pageDefault,
        cursor: q.cursor ?? null,
      }),
      "query",
    );
    return { data: page.memories.map(memoryView), next_cursor: page.next };
  });

  const byId = (params: unknown): MemoryRef => ({ id: pathId(params, "memory") });
  const byKey = (params: unknown): MemoryRef => parseOr400(keyParams, params, "body");

  for (const [path, ref] of [
    ["/memories/:id", byId],
    ["/memories/:namespace/:key", byKey],
  ] as const) {
    app.get(path, async (req): Promise<MemoryJson> => {
      embedderOf();
      const { tenantId } = principalOf(req);
      return memoryView(await getMemory(ctx.db, tenantId, ref(req.params)));
    });

    app.delete(path, async (req, reply) => {
      embedderOf();
      const { tenantId } = principalOf(req);
      const target = ref(req.params);
      if (!(await deleteMemory(ctx.db, tenantId, target))) {
        throw new CapstanError(
          "not_found",
          `memory ${"id" in target ? target.id : "with this key"} not found`,
        );
      }
      return reply.code(204).send();
    });
  }
}
