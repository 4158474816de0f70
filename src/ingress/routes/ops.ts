import type { FastifyInstance } from "fastify";
import { schemaStatus } from "../../state/migrate.js";
import { pingDb } from "../../state/queries.js";
import type { IngressContext } from "../context.js";
import { buildOpenApi } from "../openapi.js";

/** Resolve `p`, or reject after `ms` (a readiness probe must answer even when a backend hangs). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

const errText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

/** Unauthenticated operational endpoints (docs/http-api.md#operational-endpoints). */
export function opsRoutes(app: FastifyInstance, ctx: IngressContext, opts: { probeTimeoutMs: number }): void {
  const openapi = JSON.stringify(buildOpenApi());

  app.get("/healthz", async () => ({ status: "ok" }));

  app.get("/readyz", async (_req, reply) => {
    const checks: Record<string, { ok: boolean; detail?: string }> = {};
    await Promise.all([
      within(pingDb(ctx.db), opts.probeTimeoutMs, "postgres").then(
        () => (checks.postgres = { ok: true }),
        (err: unknown) => (checks.postgres = { ok: false, detail: errText(err) }),
      ),
      within(schemaStatus(ctx.db), opts.probeTimeoutMs, "schema").then(
        (s) =>
          (checks.schema = s.current
            ? { ok: true }
            : { ok: false, detail: `database schema is version ${s.database}, this build needs ${s.code}` }),
        (err: unknown) => (checks.schema = { ok: false, detail: errText(err) }),
      ),
      within(ctx.coord.ping(), opts.probeTimeoutMs, "coordination").then(
        (ok) =>
          (checks.coordination = ok ? { ok } : { ok, detail: `${ctx.coord.kind} coordination unreachable` }),
        (err: unknown) => (checks.coordination = { ok: false, detail: errText(err) }),
      ),
    ]);
    const agents = ctx.agentNames().length;
    checks.agents = agents > 0 ? { ok: true } : { ok: false, detail: "no agents loaded" };
    if (ctx.shutdown.aborted) checks.shutdown = { ok: false, detail: "shutting down" };
    const ready = Object.values(checks).every((c) => c.ok);
    return reply.code(ready ? 200 : 503).send({ status: ready ? "ready" : "unready", checks });
  });

  app.get("/metrics", async (_req, reply) => {
    const { contentType, body } = await ctx.metrics.base.render();
    return reply.type(contentType).send(body);
  });

  app.get("/openapi.json", async (_req, reply) =>
    reply.type("application/json; charset=utf-8").send(openapi),
  );
}
