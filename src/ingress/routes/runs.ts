import type { FastifyInstance, FastifyReply } from "fastify";
import { CapstanError } from "../../errors.js";
import { withIdempotencyKey, type StoredResponse } from "../../state/idempotency.js";
import { readJournal } from "../../state/journal.js";
import { cancelRun, enqueueRun, getRun, resumeRun } from "../../state/scheduler.js";
import { isTerminal, type Run, type RunEvent } from "../../state/types.js";
import type { Db } from "../../state/db.js";
import { principalOf, type IngressContext } from "../context.js";
import { idempotencyKeyOf, requestHash } from "../idempotency.js";
import { publishPersisted } from "../publish.js";
import { createRunBody, LIMITS, resumeBody, waitQuery, type RunJson, type StepListJson } from "../schemas.js";
import { optionalBody, parseOr400, pathId } from "../validate.js";
import { runView, stepView } from "../views.js";
import { z } from "zod";
import { runCost, type PriceTable } from "../../cost/pricing.js";

/** POST bodies that carry nothing (cancel): absent, or an empty object. */
const emptyBody = z.strictObject({});

export interface RunRouteOptions {
  /** The price table (`models.prices`): every run answer then carries `usage.estimated_cost`. */
  prices?: PriceTable | undefined;
}

/** Run endpoints (docs/http-api.md#runs), except the event stream (./events.ts). Tenant-scoped throughout. */
export function runRoutes(app: FastifyInstance, ctx: IngressContext, opts: RunRouteOptions = {}): void {
  const prices = opts.prices && Object.keys(opts.prices).length > 0 ? opts.prices : undefined;
  /** A run with its estimated cost when there is a price table (one more query, on `db`). */
  const viewWithCost = async (run: Run, db: Db = ctx.db): Promise<RunJson> =>
    runView(run, prices ? await costOf(run, db, prices) : undefined);
  // No tokens yet (a new or queued run: the totals grow in the same write as each step): no query.
  const costOf = (run: Run, db: Db, p: PriceTable) =>
    run.usage.inputTokens + run.usage.outputTokens === 0 ? 0 : runCost(db, run.id, p);

  const publish = (events: RunEvent[]) =>
    publishPersisted({ events: ctx.coord.events, logger: ctx.logger, metrics: ctx.metrics }, events);

  const send = (reply: FastifyReply, out: { response: StoredResponse; replayed: boolean }) => {
    if (out.replayed) reply.header("idempotent-replayed", "true");
    return reply.code(out.response.statusCode).send(out.response.body);
  };

  app.post("/threads/:id/runs", async (req, reply) => {
    const { tenantId } = principalOf(req);
    const threadId = pathId(req.params, "thread");
    const key = idempotencyKeyOf(req);
    const body = parseOr400(createRunBody, req.body, "body");
    const agents = ctx.agentNames();
    if (!agents.includes(body.agent)) {
      throw new CapstanError("unknown_agent", `no agent named ${JSON.stringify(body.agent)} is loaded`, {
        fields: [
          {
            field: "agent",
            message:
              agents.length > 0
                ? `unknown agent; loaded: ${agents.slice(0, 20).join(", ")}`
                : "no agents are loaded",
          },
        ],
      });
    }
    const result = await enqueueRun(ctx.db, {
      tenantId,
      threadId,
      agent: body.agent,
      content: typeof body.input === "string" ? body.input : body.input.content,
      ...(body.multitask ? { multitask: body.multitask } : {}),
      ...(body.metadata ? { metadata: body.metadata } : {}),
      ...(key
        ? { idempotencyKey: key, requestHash: requestHash("POST", `/v1/threads/${threadId}/runs`, body) }
        : {}),
      maxAttempts: ctx.settings.worker.maxAttempts,
      defaultMaxPending: ctx.settings.limits.maxPendingRunsPerTenant,
      // This request's span (tracing on): each worker attempt continues the trace.
      ...(req.traceContext ? { traceContext: req.traceContext } : {}),
    });
    await publish(result.events);
    if (!result.created) reply.header("idempotent-replayed", "true");
    return reply
      .code(202)
      .header("location", `/v1/runs/${result.run.id}`)
      .send(await viewWithCost(result.run));
  });

  app.get("/runs/:id", async (req): Promise<RunJson> => {
    const { tenantId } = principalOf(req);
    return viewWithCost(await getRun(ctx.db, tenantId, pathId(req.params, "run")));
  });

  app.get("/runs/:id/steps", async (req): Promise<StepListJson> => {
    const { tenantId } = principalOf(req);
    const run = await getRun(ctx.db, tenantId, pathId(req.params, "run"));
    return { data: (await readJournal(ctx.db, run.id)).map(stepView) };
  });

  app.get("/runs/:id/wait", async (req, reply): Promise<RunJson> => {
    const { tenantId } = principalOf(req);
    const runId = pathId(req.params, "run");
    const q = parseOr400(waitQuery, req.query, "query");
    const timeoutMs = (q.timeout ?? LIMITS.waitDefaultSeconds) * 1000;
    return viewWithCost(await ctx.track(waitForRun(ctx, tenantId, runId, timeoutMs, reply)));
  });

  app.post("/runs/:id/cancel", async (req, reply) => {
    const { tenantId } = principalOf(req);
    const runId = pathId(req.params, "run");
    const key = idempotencyKeyOf(req);
    const body = parseOr400(emptyBody, optionalBody(req.body), "body");
    const cancel = async (db: Db) => {
      const { run, events } = await cancelRun(db, tenantId, runId);
      return { response: { statusCode: 200, body: await viewWithCost(run, db) }, extra: events };
    };
    const out = key
      ? await withIdempotencyKey(
          ctx.db,
          { tenantId, key, requestHash: requestHash("POST", `/v1/runs/${runId}/cancel`, body) },
          cancel,
        )
      : { ...(await cancel(ctx.db)), replayed: false };
    await publish(out.extra ?? []);
    return send(reply, out);
  });

  app.post("/runs/:id/resume", async (req, reply) => {
    const { tenantId } = principalOf(req);
    const runId = pathId(req.params, "run");
    const key = idempotencyKeyOf(req);
    const body = parseOr400(resumeBody, req.body, "body");
    const decision = {
      decision: body.decision,
      ...(body.input !== undefined ? { input: body.input } : {}),
      // Tracing on: the resumed attempt's span links to this request.
      ...(req.traceContext ? { trace: req.traceContext } : {}),
    };
    const resume = async (db: Db) => ({
      response: {
        statusCode: 200,
        body: await viewWithCost(await resumeRun(db, tenantId, runId, decision), db),
      },
    });
    const out = key
      ? await withIdempotencyKey(
          ctx.db,
          { tenantId, key, requestHash: requestHash("POST", `/v1/runs/${runId}/resume`, body) },
          resume,
        )
      : { ...(await resume(ctx.db)), replayed: false };
    return send(reply, out);
  });
}

/**
 * Long-poll: answer as soon as the run is terminal or waiting, else at the
 * timeout with its current state. Woken by the shared NOTIFY listener (every
 * move to a terminal status or to `waiting` persists an event), with a slow
 * poll as a fallback; ends early when the client leaves or the server closes.
 */
async function waitForRun(
  ctx: IngressContext,
  tenantId: string,
  runId: string,
  timeoutMs: number,
  reply: FastifyReply,
): Promise<Run> {
  const settled = (r: Run) => isTerminal(r.status) || r.status === "waiting";
  let run = await getRun(ctx.db, tenantId, runId);
  if (settled(run) || timeoutMs <= 0) return run;
  const gone = new AbortController();
  const onClose = () => gone.abort();
  reply.raw.on("close", onClose);
  const signal = AbortSignal.any([gone.signal, ctx.shutdown]);
  const watch = ctx.hub.watch(runId);
  try {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      // Re-read after the watch is open: nothing committed in between is missed.
      run = await getRun(ctx.db, tenantId, runId);
      const left = deadline - Date.now();
      if (settled(run) || left <= 0 || signal.aborted) return run;
      await watch.next(Math.min(left, ctx.waitPollMs), signal);
    }
  } finally {
    watch.close();
    reply.raw.off("close", onClose);
  }
}
