import type { Logger } from "../logger.js";
import { CHANNELS } from "./channels.js";
import type { Db, Unlisten } from "./db.js";
import { DbConnectionError } from "./pg-errors.js";
import { claimRun, reclaimExpired, releaseRun } from "./scheduler.js";
import { leasesOf } from "./write-outcome.js";
import type { ClaimedRun } from "./types.js";

export interface ClaimerOptions {
  db: Db;
  workerId: string;
  leaseMs: number;
  /** Fallback poll period when no NOTIFY arrives (missed, or the listener is down). */
  pollMs: number;
  /** Free slots right now; the claimer never claims more than this. */
  capacity: () => number;
  /** Called for every claimed run; must not throw. */
  onClaim: (run: ClaimedRun) => void;
  logger: Logger;
  /** Expired-lease sweep period (default: the poll period). */
  reclaimEveryMs?: number;
  /** Observability hooks. */
  onWake?: (reason: "notify" | "poll" | "poke") => void;
  /** Called each time the loop goes to sleep with nothing to claim. */
  onSleep?: () => void;
  /** After each expired-lease sweep, with what it did. */
  onReclaim?: (result: { requeued: number; failed: number }) => void;
  /**
   * Ids of the runs the caller holds. When given, a claim whose answer was
   * lost (the connection died after it was sent) is followed by handing back
   * every run leased to this worker that it does not hold: one the claim
   * took without the worker knowing, which would otherwise sit out its lease.
   */
  held?: () => Iterable<string>;
}

export interface Claimer {
  start(): Promise<void>;
  /** Stop claiming; resolves when the loop has exited. Claimed runs are the caller's. */
  stop(): Promise<void>;
  /** Wake the loop now (a slot was freed). */
  poke(): void;
}

/**
 * The claim loop: claims while there is capacity and work, then sleeps until
 * a NOTIFY on `capstan_runs`, a poke, or the poll timer, whichever is first.
 * A wake-up that arrives while claiming is remembered, never lost.
 */
export function createClaimer(opts: ClaimerOptions): Claimer {
  let running = false;
  let wakePending = false;
  let wake: ((reason: "notify" | "poll" | "poke") => void) | undefined;
  let loopDone: Promise<void> = Promise.resolve();
  let unlisten: Unlisten | undefined;
  let lastReclaim = 0;
  const reclaimEvery = opts.reclaimEveryMs ?? opts.pollMs;

  const signal = (reason: "notify" | "poll" | "poke") => {
    if (wake) {
      const w = wake;
      wake = undefined;
      w(reason);
    } else {
      wakePending = true;
    }
  };

  const sleep = () =>
    new Promise<"notify" | "poll" | "poke">((resolve) => {
      const timer = setTimeout(() => {
        wake = undefined;
        resolve("poll");
      }, opts.pollMs);
      wake = (reason) => {
        clearTimeout(timer);
        resolve(reason);
      };
    });

  /** Set by a claim of unknown outcome; cleared once the hand-back ran. */
  let orphansPossible = false;

  async function handBackOrphans(): Promise<void> {
    const held = new Set(opts.held!());
    const orphans = (await leasesOf(opts.db, opts.workerId)).filter((l) => !held.has(l.runId));
    for (const lease of orphans) await releaseRun(opts.db, lease);
    orphansPossible = false;
    if (orphans.length)
      opts.logger.info({ runs: orphans.map((l) => l.runId) }, "handed back runs claimed by a lost answer");
  }

  async function loop(): Promise<void> {
    let backoff = 100;
    while (running) {
      try {
        if (orphansPossible) await handBackOrphans();
        if (Date.now() - lastReclaim >= reclaimEvery) {
          lastReclaim = Date.now();
          const r = await reclaimExpired(opts.db);
          opts.onReclaim?.({ requeued: r.requeued.length, failed: r.failed.length });
          if (r.requeued.length || r.failed.length) opts.logger.info(r, "reclaimed expired leases");
        }
        while (running && opts.capacity() > 0) {
          let run: ClaimedRun | null;
          try {
            run = await claimRun(opts.db, { workerId: opts.workerId, leaseMs: opts.leaseMs });
          } catch (err) {
            if (opts.held && err instanceof DbConnectionError && err.outcome === "unknown")
              orphansPossible = true;
            throw err;
          }
          if (!run) break;
          opts.onClaim(run);
        }
        backoff = 100;
        if (!running) break;
        if (wakePending) {
          wakePending = false;
          continue;
        }
        const sleeping = sleep();
        opts.onSleep?.();
        const reason = await sleeping;
        opts.onWake?.(reason);
      } catch (err) {
        // Database down or restarting: keep the loop alive, retry with backoff.
        opts.logger.warn({ err }, "claim loop error; retrying");
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 5_000);
      }
    }
  }

  return {
    async start() {
      if (running) return;
      running = true;
      try {
        unlisten = await opts.db.listen(
          CHANNELS.runs,
          () => signal("notify"),
          () => signal("notify"),
        );
      } catch (err) {
        opts.logger.warn({ err }, "LISTEN failed; relying on polling");
      }
      loopDone = loop();
    },
    async stop() {
      running = false;
      signal("poke");
      await loopDone;
      await unlisten?.();
      unlisten = undefined;
    },
    poke: () => signal("poke"),
  };
}
