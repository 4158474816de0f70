import type { FastifyInstance } from "fastify";
import { getRunProgress } from "../../state/queries.js";
import { getRun } from "../../state/scheduler.js";
import { isTerminal } from "../../state/types.js";
import { CapstanError } from "../../errors.js";
import { principalOf, type IngressContext } from "../context.js";
import { eventsQuery } from "../schemas.js";
import { parseCursor, serveRunEvents } from "../sse.js";
import { parseOr400, pathId } from "../validate.js";

/** `GET /v1/runs/:id/events`: see ../sse.ts for the streaming contract. */
export function eventRoutes(app: FastifyInstance, ctx: IngressContext): void {
  app.get("/runs/:id/events", async (req, reply) => {
    const { tenantId } = principalOf(req);
    const runId = pathId(req.params, "run");
    const q = parseOr400(eventsQuery, req.query, "query");
    const after = parseCursor(req.headers["last-event-id"], q.after);
    await getRun(ctx.db, tenantId, runId); // 404 for unknown and foreign runs
    if (ctx.shutdown.aborted) throw new CapstanError("server_busy", "the server is shutting down; retry");

    const watch = ctx.hub.watch(runId);
    try {
      // Read progress after the watch is open, so no notification is missed in between.
      const progress = await getRunProgress(ctx.db, runId);
      if (!progress) throw new CapstanError("not_found", `run ${runId} not found`);
      if (isTerminal(progress.status) && after.n >= progress.lastEventId) {
        // Finished, nothing after the cursor: 204 tells SSE clients not to reconnect.
        return reply.code(204).send();
      }
      const headers: Record<string, string> = {};
      for (const [k, v] of Object.entries(reply.getHeaders())) {
        if (typeof v === "string" || typeof v === "number") headers[k] = String(v);
      }
      await ctx.track(
        serveRunEvents(
          {
            db: ctx.db,
            events: ctx.coord.events,
            logger: ctx.logger.child({ requestId: req.id, tenantId }),
            metrics: ctx.metrics,
            opts: ctx.sse,
            shutdown: ctx.shutdown,
          },
          reply,
          { runId, after, progress, watch, headers },
        ),
      );
      return reply;
    } finally {
      watch.close();
    }
  });
}
