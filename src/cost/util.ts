/** A bounded waiting primitive shared by the cost modules. */
import { abortReason } from "../abort.js";
import { CapstanError } from "../errors.js";

interface SlotWaiter {
  grant(): void;
}

/**
 * One holder per key at a time (an async mutex per key), FIFO, with bounded
 * waits: a waiter gives up after `timeoutMs` (`server_busy`) or when its
 * signal aborts, and at most `maxWaiters` wait per key.
 */
export class KeyedSlots {
  private readonly queues = new Map<string, SlotWaiter[]>();

  constructor(private readonly maxWaiters = 10_000) {}

  /** Resolves with the release function once the caller holds the key's slot. */
  acquire(key: string, opts: { signal?: AbortSignal; timeoutMs: number; what: string }): Promise<() => void> {
    const release = this.releaser(key);
    const queue = this.queues.get(key);
    if (!queue) {
      this.queues.set(key, []);
      return Promise.resolve(release);
    }
    if (opts.signal?.aborted) return Promise.reject(abortReason(opts.signal));
    if (queue.length >= this.maxWaiters) {
      return Promise.reject(
        new CapstanError("server_busy", `too many calls waiting for ${opts.what} (limit ${this.maxWaiters})`),
      );
    }
    return new Promise((resolve, reject) => {
      const settle = (): boolean => {
        const i = queue.indexOf(w);
        if (i < 0) return false;
        queue.splice(i, 1);
        clearTimeout(timer);
        opts.signal?.removeEventListener("abort", onAbort);
        return true;
      };
      const w: SlotWaiter = {
        grant: () => {
          // Called by the releaser after it removed w from the queue.
          clearTimeout(timer);
          opts.signal?.removeEventListener("abort", onAbort);
          resolve(release);
        },
      };
      const onAbort = (): void => {
        if (settle()) reject(abortReason(opts.signal!));
      };
      const timer = setTimeout(() => {
        if (settle()) {
          reject(new CapstanError("server_busy", `waited ${opts.timeoutMs} ms for ${opts.what}; giving up`));
        }
      }, opts.timeoutMs);
      queue.push(w);
      opts.signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Holders + waiters of a key (tests, metrics). */
  size(key: string): number {
    const q = this.queues.get(key);
    return q ? q.length + 1 : 0;
  }

  private releaser(key: string): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const queue = this.queues.get(key);
      if (!queue) return;
      const next = queue.shift();
      if (next) next.grant();
      else this.queues.delete(key);
    };
  }
}
