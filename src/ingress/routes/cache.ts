import type { FastifyInstance } from "fastify";
import { createToolCache, type ToolCache } from "../../cost/cache.js";
import { principalOf, type IngressContext } from "../context.js";
import { invalidateBody, type InvalidateResultJson } from "../schemas.js";
import { optionalBody, parseOr400 } from "../validate.js";

export { invalidateBody };

export interface CacheRouteOptions {
  /** Default: a tool cache on `ctx.coord.cache` (the same one workers use). */
  toolCache?: ToolCache;
}

/**
 * `POST /cache/invalidate {tags}`: every cached pure-tool result of the
 * caller's tenant carrying one of the tags is a miss from now on (other
 * tenants are unaffected). Naturally idempotent: repeating it only costs
 * misses. 503 `redis_unavailable` when it could not be recorded: retry.
 */
export function cacheRoutes(
  app: FastifyInstance,
  ctx: Pick<IngressContext, "coord" | "logger">,
  opts: CacheRouteOptions = {},
): void {
  const cache = opts.toolCache ?? createToolCache({ cache: ctx.coord.cache, logger: ctx.logger });

  app.post("/cache/invalidate", async (req): Promise<InvalidateResultJson> => {
    const { tenantId } = principalOf(req);
    const body = parseOr400(invalidateBody, optionalBody(req.body), "body");
    const invalidated = await cache.invalidate(tenantId, body.tags);
    return { invalidated };
  });
}
