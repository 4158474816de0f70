/**
 * One LISTEN on `capstan_events` per process, fanned out to every SSE stream
 * and `/wait` call watching a run. A notification (`runId:lastEventId`) is
 * sent at the commit of every transaction that persisted coarse events —
 * which includes every move to a terminal status or to `waiting`.
 *
 * Bounded: at most `maxWatchers` watches at once (one more is refused with
 * `server_busy`), and each watch buffers one bit ("something happened") plus
 * the highest id seen, however many notifications arrive. Notifications can be
 * lost (listener reconnect, Postgres restart), so watchers also poll slowly;
 * after a reconnect every watcher is woken to re-read at once.
 */
import { CapstanError } from "../errors.js";
import type { Logger } from "../logger.js";
import { CHANNELS } from "../state/channels.js";
import type { Db, Unlisten } from "../state/db.js";

export interface RunWatch {
  /** Highest persisted event id announced for the run since the watch began (0: none). */
  readonly latest: number;
  /**
   * Resolves when a notification arrived since the last call (at once if one
   * is pending), after `timeoutMs`, or when `signal` aborts. Returns true when
   * woken by a notification.
   */
  next(timeoutMs: number, signal?: AbortSignal): Promise<boolean>;
  /**
   * True (once) after the LISTEN connection was (re)established while this
   * watch was open: notifications may have been missed, re-read the run.
   */
  takeResync(): boolean;
  close(): void;
}

export interface RunWatchHub {
  /**
   * Start listening now rather than at the first watch, waiting at most
   * `timeoutMs`. Never throws: a failure is logged and retried later.
   */
  start(timeoutMs: number): Promise<void>;
  /** Throws `server_busy` when `maxWatchers` watches are open. */
  watch(runId: string): RunWatch;
  /** Open watches. */
  size(): number;
  /** Whether the LISTEN connection is up (false: watchers rely on polling). */
  listening(): boolean;
  close(): Promise<void>;
}

export interface RunWatchHubOptions {
  maxWatchers?: number;
  /** Delay before retrying a failed LISTEN start. Default 2,000 ms. */
  retryMs?: number;
}

interface Watcher {
  latest: number;
  pending: boolean;
  resync: boolean;
  wake: (() => void) | undefined;
}

export function createRunWatchHub(db: Db, logger: Logger, opts: RunWatchHubOptions = {}): RunWatchHub {
  const maxWatchers = opts.maxWatchers ?? 10_000;
  const retryMs = opts.retryMs ?? 2_000;
  const byRun = new Map<string, Set<Watcher>>();
  let count = 0;
  let unlisten: Unlisten | undefined;
  let starting: Promise<void> | undefined;
  let lastFailureAt = 0;
  let closed = false;

  const poke = (w: Watcher, id?: number): void => {
    if (id !== undefined && id > w.latest) w.latest = id;
    w.pending = true;
    const wake = w.wake;
    w.wake = undefined;
    wake?.();
  };

  const onNotify = (payload: string): void => {
    const i = payload.lastIndexOf(":");
    if (i <= 0) return;
    const set = byRun.get(payload.slice(0, i));
    if (!set) return;
    const id = Number(payload.slice(i + 1));
    for (const w of set) poke(w, Number.isSafeInteger(id) ? id : undefined);
  };

  const onReconnect = (): void => {
    // Notifications were missed while the connection was down: everyone re-reads.
    for (const set of byRun.values()) {
      for (const w of set) {
        w.resync = true;
        poke(w);
      }
    }
  };

  /** Start listening if not already, at most once per `retryMs` after a failure. Never throws. */
  function ensureListening(): void {
    if (closed || unlisten || starting || Date.now() - lastFailureAt < retryMs) return;
    starting = db
      .listen(CHANNELS.events, onNotify, onReconnect)
      .then(
        async (u) => {
          if (closed) {
            await u();
            return;
          }
          unlisten = u;
          // Anything committed before LISTEN took effect is caught by this re-read.
          onReconnect();
        },
        (err: unknown) => {
          lastFailureAt = Date.now();
          logger.warn({ err }, "LISTEN capstan_events failed; run watchers fall back to polling");
        },
      )
      .finally(() => {
        starting = undefined;
      });
  }

  return {
    async start(timeoutMs) {
      ensureListening();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        starting,
        new Promise<void>((resolve) => {
          timer = setTimeout(resolve, timeoutMs);
        }),
      ]);
      clearTimeout(timer);
    },
    watch(runId) {
      if (closed) throw new CapstanError("server_busy", "the server is shutting down");
      if (count >= maxWatchers) {
        throw new CapstanError(
          "server_busy",
          `too many open streams on this server (limit ${maxWatchers}); retry`,
        );
      }
      ensureListening();
      const w: Watcher = { latest: 0, pending: false, resync: false, wake: undefined };
      let set = byRun.get(runId);
      if (!set) {
        set = new Set();
        byRun.set(runId, set);
      }
      set.add(w);
      count++;
      let open = true;
      return {
        get latest() {
          return w.latest;
        },
        next(timeoutMs, signal) {
          if (w.pending || !open || signal?.aborted) {
            const was = w.pending;
            w.pending = false;
            return Promise.resolve(was);
          }
          ensureListening();
          return new Promise<boolean>((resolve) => {
            const done = (woken: boolean): void => {
              clearTimeout(timer);
              signal?.removeEventListener("abort", onAbort);
              w.wake = undefined;
              if (woken) w.pending = false;
              resolve(woken);
            };
            const onAbort = (): void => done(false);
            const timer = setTimeout(() => done(false), Math.max(0, timeoutMs));
            signal?.addEventListener("abort", onAbort, { once: true });
            w.wake = () => done(true);
          });
        },
        takeResync() {
          const r = w.resync;
          w.resync = false;
          return r;
        },
        close() {
          if (!open) return;
          open = false;
          count--;
          set.delete(w);
          if (set.size === 0 && byRun.get(runId) === set) byRun.delete(runId);
          poke(w);
        },
      };
    },
    size: () => count,
    listening: () => unlisten !== undefined,
    async close() {
      closed = true;
      for (const set of byRun.values()) for (const w of set) poke(w);
      await starting;
      const u = unlisten;
      unlisten = undefined;
      await u?.();
    },
  };
}
