import type { FastifyInstance } from "fastify";
import { withIdempotencyKey } from "../../state/idempotency.js";
import { createThread, getThread, listMessages } from "../../state/threads.js";
import { principalOf, type IngressContext } from "../context.js";
import { idempotencyKeyOf, requestHash } from "../idempotency.js";
import { createThreadBody, LIMITS, messagesQuery, type MessagePageJson } from "../schemas.js";
import { optionalBody, parseOr400, pathId } from "../validate.js";
import { messageView, threadView } from "../views.js";

/** Thread endpoints (docs/http-api.md#threads). Every query is scoped to the caller's tenant. */
export function threadRoutes(app: FastifyInstance, ctx: IngressContext): void {
  app.post("/threads", async (req, reply) => {
    const { tenantId } = principalOf(req);
    const key = idempotencyKeyOf(req);
    const body = parseOr400(createThreadBody, optionalBody(req.body), "body");
    const create = async (q: IngressContext["db"]) => {
      const thread = await createThread(q, tenantId, body.metadata ?? {});
      return { statusCode: 201, body: threadView(thread) };
    };
    if (!key) {
      const out = await create(ctx.db);
      return reply.code(out.statusCode).header("location", `/v1/threads/${out.body.id}`).send(out.body);
    }
    const out = await withIdempotencyKey(
      ctx.db,
      { tenantId, key, requestHash: requestHash("POST", "/v1/threads", body) },
      async (tx) => ({ response: await create(tx) }),
    );
    if (out.replayed) reply.header("idempotent-replayed", "true");
    const id = (out.response.body as { id?: unknown } | null)?.id;
    if (out.response.statusCode === 201 && typeof id === "string")
      reply.header("location", `/v1/threads/${id}`);
    return reply.code(out.response.statusCode).send(out.response.body);
  });

  app.get("/threads/:id", async (req) => {
    const { tenantId } = principalOf(req);
    return threadView(await getThread(ctx.db, tenantId, pathId(req.params, "thread")));
  });

  app.get("/threads/:id/messages", async (req): Promise<MessagePageJson> => {
    const { tenantId } = principalOf(req);
    const threadId = pathId(req.params, "thread");
    const q = parseOr400(messagesQuery, req.query, "query");
    const limit = q.limit ?? LIMITS.pageDefault;
    const messages = await listMessages(ctx.db, tenantId, threadId, q.after ?? 0, limit);
    const data = messages.map(messageView);
    return { data, next_after: data.length === limit ? data[data.length - 1]!.seq : null };
  });
}
