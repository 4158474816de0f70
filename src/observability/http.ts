import type { FastifyInstance } from "fastify";
import type { Metrics } from "./metrics.js";

/**
 * Observe every answered request in `httpRequestDuration`, labelled with the
 * route *template* (`/v1/runs/:id`, never the raw URL: bounded cardinality),
 * the method and the status. Unmatched URLs share the label `unmatched`.
 * Register before the routes (hooks apply to routes added after them).
 */
export function instrumentFastify(app: FastifyInstance, metrics: Metrics): void {
  app.addHook("onResponse", async (req, reply) => {
    metrics.httpRequestDuration.observe(
      { route: req.routeOptions.url ?? "unmatched", method: req.method, status: String(reply.statusCode) },
      reply.elapsedTime / 1000,
    );
  });
}
