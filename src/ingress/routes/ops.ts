import type { FastifyInstance } from "fastify";
import { readinessBody, readinessChecks } from "../../observability/ops-server.js";
import type { IngressContext } from "../context.js";
import { buildOpenApi } from "../openapi.js";

/** Unauthenticated operational endpoints (docs/http-api.md#operational-endpoints). */
export function opsRoutes(app: FastifyInstance, ctx: IngressContext, opts: { probeTimeoutMs: number }): void {
  const openapi = JSON.stringify(buildOpenApi());
  // The same checks and body as the worker's ops server: one /readyz shape for every role.
  const readiness = readinessChecks({
    db: ctx.db,
    coord: ctx.coord,
    agents: () => ctx.agentNames().length,
    draining: () => ctx.shutdown.aborted,
    timeoutMs: opts.probeTimeoutMs,
  });

  app.get("/healthz", async () => ({ status: "ok" }));

  app.get("/readyz", async (_req, reply) => {
    const r = await readiness();
    return reply.code(r.ok ? 200 : 503).send(readinessBody(r));
  });

  app.get("/metrics", async (_req, reply) => {
    const { contentType, body } = await ctx.metrics.base.render();
    return reply.type(contentType).send(body);
  });

  app.get("/openapi.json", async (_req, reply) =>
    reply.type("application/json; charset=utf-8").send(openapi),
  );
}
