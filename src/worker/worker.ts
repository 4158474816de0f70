import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import type { Coordination } from "../coord/types.js";
import { heartbeatMs, type Settings } from "../config/config.js";
import { LeaseLostError } from "../errors.js";
import { throttledLog, type Logger } from "../logger.js";
import { CHANNELS } from "../state/channels.js";
import { createClaimer, type Claimer } from "../state/claimer.js";
import type { Db, Unlisten } from "../state/db.js";
import { heartbeat, pruneFinished, releaseRun } from "../state/scheduler.js";
import { expireMemories } from "../state/memories.js";
import type { ClaimedRun, RunError } from "../state/types.js";
import type { RetryPolicy } from "./model-call.js";
import { PUBLISH_FAILED, RunPublisher } from "./publisher.js";
import { withDbRetry } from "./db-retry.js";
import { writeFinish } from "./run-writes.js";
import type { RunServices } from "./services.js";
import { executeRun, type LoadedAgent, type RunOutcome } from "./run-loop.js";
import type { WorkerMetricsHooks } from "../observability/worker-hooks.js";

export interface WorkerDeps {
  db: Db;
  coord: Coordination;
  agents: Map<string, LoadedAgent>;
  settings: Settings;
  logger: Logger;
  retry?: RetryPolicy;
  /** Observability hooks (metrics); each must be cheap and never throw. */
  hooks?: Partial<WorkerMetricsHooks>;
  /** Budgets, provider limits, caches, memory (each optional). */
  services?: RunServices;
  /**
   * Wraps the whole execution of each claimed run (tracing: binds the run so
   * hooks called anywhere in its async work find its span). Must call `fn`
   * once and return its promise unchanged.
   */
  runScope?: <T>(run: ClaimedRun, fn: () => Promise<T>) => Promise<T>;
}

export interface Worker {
  readonly id: string;
  start(): Promise<void>;
  /**
   * Graceful stop: claim nothing more, let in-flight steps finish and hand
   * their runs off at the next step boundary; after the grace period abort
   * what remains and release its leases at once, so another worker resumes
   * without waiting for lease expiry.
   */
  stop(opts?: { graceMs?: number }): Promise<void>;
  inFlight(): number;
}

interface Active {
  run: ClaimedRun;
  controller: AbortController;
  done: Promise<void>;
  /**
   * Until when (monotonic clock, ms) this worker can be sure it still holds
   * the lease: the start of the last successful heartbeat (or the claim) plus
   * the lease, minus a margin. PostgreSQL fences every write, but not what a
   * tool does outside it: past this instant another worker may own the run,
   * so no non-pure tool may start, and the run is aborted.
   */
  leaseDeadline: number;
  /**
   * Set when the watchdog aborted the run because its lease could not be
   * confirmed in time (a slow database, a paused process), not because the
   * lease was found lost: the run is then handed back (`releaseRun`, fenced by
   * epoch, a no-op if another worker took it), so an infrastructure hiccup
   * neither waits for lease expiry nor counts against the run's attempts.
   */
  unconfirmed?: boolean;
}

/** A monotonic clock: it keeps running while the process is paused (SIGSTOP, a VM freeze). */
const monotonic = (): number => performance.now();

export function createWorker(deps: WorkerDeps): Worker {
  const { db, settings } = deps;
  const id = settings.worker.id ?? `${hostname()}:${process.pid}:${randomBytes(3).toString("hex")}`;
  const logger = deps.logger.child({ workerId: id });
  const active = new Map<string, Active>();
  let draining = false;
  let stopped = false;
  let claimer: Claimer | undefined;
  let hbTimer: NodeJS.Timeout | undefined;
  let sweepTimer: NodeJS.Timeout | undefined;
  let unlistenControl: Unlisten | undefined;

  const abortRun = (runId: string, reason: Error) => active.get(runId)?.controller.abort(reason);
  // One Redis outage fails every delta publish of every run: a few lines with counts, not thousands.
  const publishFailures = throttledLog(logger, "warn", PUBLISH_FAILED, { intervalMs: 10_000 });
  // Heartbeat retries stop at shutdown.
  const beatStop = new AbortController();
  const beatSignal = beatStop.signal;
  const leaseMs = settings.worker.leaseMs;
  // The claim's lease started before the claim's answer arrived: keep a margin.
  const leaseMargin = Math.max(200, Math.floor(leaseMs / 5));
  let watchdog: NodeJS.Timeout | undefined;

  /** Abort every run whose lease may have run out locally (e.g. after the process was paused). */
  function checkLeaseDeadlines(): void {
    const now = monotonic();
    for (const a of active.values()) {
      if (now < a.leaseDeadline || a.controller.signal.aborted) continue;
      a.unconfirmed = true;
      logger.warn(
        { runId: a.run.id, overdueMs: Math.round(now - a.leaseDeadline) },
        "the run's lease may have expired (no successful heartbeat in time; was the process paused?); aborting it locally",
      );
      a.controller.abort(new LeaseLostError(a.run.id, a.run.lease.epoch));
    }
  }

  function startRun(run: ClaimedRun): void {
    const controller = new AbortController();
    const entry: Active = {
      run,
      controller,
      done: Promise.resolve(),
      leaseDeadline: monotonic() + leaseMs - leaseMargin,
    };
    const runLogger = logger.child({ runId: run.id, tenantId: run.tenantId, attempt: run.attempts });
    const started = Date.now();
    deps.hooks?.onClaim?.(run);
    const execute = async (): Promise<void> => {
      let outcome: RunOutcome = "aborted";
      try {
        const agent = deps.agents.get(run.agent);
        const publisher = new RunPublisher(deps.coord.events, run.id, run.lastEventId, runLogger, {
          deltaFlushMs: 25,
          publishFailures,
        });
        if (!agent) {
          const error: RunError = {
            code: "unknown_agent",
            message: `no agent named "${run.agent}" is loaded on this worker`,
          };
          const scope = { db, run, publisher, signal: controller.signal, logger: runLogger };
          await publisher.coarse(await writeFinish(scope, { status: "failed", error }));
          runLogger.warn({ error }, "run failed");
          outcome = "failed";
          return;
        }
        outcome = await executeRun({
          db,
          run,
          agent,
          publisher,
          signal: controller.signal,
          draining: () => draining,
          logger: runLogger,
          workerId: id,
          hooks: deps.hooks ?? {},
          services: deps.services ?? {},
          leaseValid: () => monotonic() < entry.leaseDeadline,
          ...(deps.retry ? { retry: deps.retry } : {}),
        });
        if (
          outcome === "aborted" &&
          entry.unconfirmed &&
          (await releaseRun(db, run.lease).catch(() => false))
        ) {
          runLogger.info("handed the run back: its lease could not be confirmed in time");
          outcome = "released";
        }
        await publisher.drain();
      } catch (err) {
        runLogger.error({ err }, "run crashed in the worker");
      } finally {
        // Whatever ended the run, nothing of it may keep working once it leaves `active`.
        if (!controller.signal.aborted) controller.abort(new Error("the run left the worker"));
        active.delete(run.id);
        deps.hooks?.onRunEnd?.(run, outcome, Date.now() - started);
        runLogger.info({ outcome, ms: Date.now() - started }, "run left the worker");
        claimer?.poke();
      }
    };
    active.set(run.id, entry);
    entry.done = deps.runScope ? deps.runScope(run, execute) : execute();
  }

  async function beat(): Promise<void> {
    const leases = [...active.values()].map((a) => a.run.lease);
    // The database extends each lease to (its now) + leaseMs, which is after this instant.
    const sentAt = monotonic();
    try {
      // Idempotent: re-run on a fresh connection at once rather than a heartbeat period later.
      const held = await withDbRetry({ signal: beatSignal, logger }, "heartbeat", () =>
        heartbeat(db, leases, settings.worker.leaseMs),
      );
      for (const l of leases) {
        if (!held.has(l.runId)) abortRun(l.runId, new LeaseLostError(l.runId, l.epoch));
        else {
          const a = active.get(l.runId);
          if (a && a.run.lease.epoch === l.epoch) a.leaseDeadline = sentAt + leaseMs - leaseMargin;
        }
      }
    } catch (err) {
      // Runs keep their deadline: past it the watchdog aborts them (checkLeaseDeadlines).
      logger.warn({ err }, "heartbeat failed");
    }
  }

  return {
    id,
    inFlight: () => active.size,
    async start() {
      unlistenControl = await db
        .listen(CHANNELS.control, (runId) => abortRun(runId, new Error(`run ${runId} was cancelled`)))
        .catch((err: unknown) => {
          logger.warn({ err }, "LISTEN for cancellations failed; cancels are noticed at the next heartbeat");
          return undefined;
        });
      claimer = createClaimer({
        db,
        workerId: id,
        leaseMs: settings.worker.leaseMs,
        pollMs: settings.worker.pollMs,
        capacity: () => (draining ? 0 : settings.worker.concurrency - active.size),
        onClaim: startRun,
        held: () => active.keys(),
        logger,
        ...(deps.hooks?.onLeaseReclaim ? { onReclaim: deps.hooks.onLeaseReclaim } : {}),
      });
      await claimer.start();
      const hb = heartbeatMs(settings);
      const tick = () => {
        hbTimer = setTimeout(
          () => void beat().finally(() => (!stopped && (!draining || active.size) ? tick() : undefined)),
          hb,
        );
      };
      tick();
      // Frequent enough to notice a pause well inside the margin; overdue ticks fire first after SIGCONT.
      watchdog = setInterval(checkLeaseDeadlines, Math.max(50, Math.min(250, Math.floor(leaseMs / 8))));
      watchdog.unref();
      const sweep = () => {
        sweepTimer = setTimeout(() => {
          void pruneFinished(db, {
            runsOlderThanMs: settings.retention.finishedRunsMs,
            idempotencyKeysOlderThanMs: settings.retention.idempotencyKeysMs,
          })
            .then((r) => (r.runs || r.idempotencyKeys ? logger.info(r, "pruned finished runs") : undefined))
            // Expired memories are already invisible to reads; this frees their rows (bounded batches).
            .then(() => expireMemories(db))
            .then((n) => (n ? logger.info({ memories: n }, "deleted expired memories") : undefined))
            .catch((err: unknown) => logger.warn({ err }, "retention sweep failed"))
            // A sweep in flight when stop() ran must not schedule another (against a closed pool).
            .finally(() => (draining ? undefined : sweep()));
        }, settings.retention.sweepIntervalMs);
        sweepTimer.unref();
      };
      sweep();
      logger.info(
        { concurrency: settings.worker.concurrency, leaseMs: settings.worker.leaseMs },
        "worker started",
      );
    },
    async stop(opts = {}) {
      const graceMs = opts.graceMs ?? settings.worker.shutdownGraceMs;
      draining = true;
      await claimer?.stop();
      if (sweepTimer) clearTimeout(sweepTimer);
      const all = () => Promise.all([...active.values()].map((a) => a.done));
      let timer: NodeJS.Timeout | undefined;
      const graceOver = new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), graceMs)));
      const res = await Promise.race([all().then(() => "done" as const), graceOver]);
      clearTimeout(timer);
      if (res === "timeout") {
        const left = [...active.values()];
        logger.warn({ runs: left.length }, "grace period over; releasing leases of runs still in flight");
        for (const a of left) a.controller.abort(new Error("worker shutting down"));
        await Promise.all(left.map((a) => releaseRun(db, a.run.lease).catch(() => false)));
        await Promise.race([all(), new Promise((r) => setTimeout(r, 1_000))]);
      }
      stopped = true; // a heartbeat in flight now does not schedule another
      beatStop.abort(new Error("worker stopped"));
      if (hbTimer) clearTimeout(hbTimer);
      if (watchdog) clearInterval(watchdog);
      await unlistenControl?.();
      publishFailures.flush();
      logger.info("worker stopped");
    },
  };
}
