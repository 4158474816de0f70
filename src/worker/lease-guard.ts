/**
 * A last check of the run's lease at the moment a tool's HTTP request is
 * written to the socket.
 *
 * The worker already refuses to start a non-pure tool once it cannot be sure
 * it holds the lease, and aborts `ctx.signal` then (src/worker/worker.ts). One
 * window is left: a process paused (SIGSTOP, a frozen VM, a long GC) in the
 * middle of a tool's `fetch`, before the request was written. On waking, Node
 * runs that I/O before any timer, so the request goes out before the worker
 * notices, while another worker may already have re-run the step.
 *
 * This closes it for `fetch` (Node's, and anything on undici's global
 * dispatcher): the worker wraps the global dispatcher, and each request made
 * inside a tool call carries that call's lease check (AsyncLocalStorage).
 * undici calls `onConnect` right before it writes the request; if the lease
 * may have run out, the request is aborted unwritten. Requests outside tool
 * calls (model calls, embeddings) pass through untouched. Other HTTP clients
 * are not covered: give such effects an idempotency key or fencing token.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { Dispatcher, getGlobalDispatcher, setGlobalDispatcher } from "undici";
import { CapstanError } from "../errors.js";

export interface LeaseGuard {
  /** Run `fn` (a tool call) so that its HTTP requests are written only while `valid()` holds. */
  run<T>(valid: () => boolean, fn: () => T): T;
  /** Put back the dispatcher that was global before `install`. */
  uninstall(): void;
}

class GuardedDispatcher extends Dispatcher {
  constructor(
    private readonly inner: Dispatcher,
    private readonly storage: AsyncLocalStorage<() => boolean>,
  ) {
    super();
  }

  override dispatch(opts: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandlers): boolean {
    const valid = this.storage.getStore();
    if (!valid) return this.inner.dispatch(opts, handler);
    const guarded = new Proxy(handler, {
      get(target, prop, receiver) {
        if (prop === "onConnect") {
          return (abort: (err?: Error) => void) => {
            if (!valid()) {
              abort(
                new CapstanError(
                  "lease_lost",
                  "request not sent: this worker can no longer be sure it holds the run's lease",
                ),
              );
              return;
            }
            target.onConnect?.(abort);
          };
        }
        const v: unknown = Reflect.get(target, prop, receiver);
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    return this.inner.dispatch(opts, guarded);
  }

  override close(): Promise<void> {
    return this.inner.close();
  }

  override destroy(): Promise<void> {
    return this.inner.destroy();
  }
}

/**
 * Wrap the process's global dispatcher (one per process: a worker role calls
 * this once at start). Safe to call with tracing or proxies configured: the
 * current global dispatcher is kept and wrapped.
 */
export function installLeaseGuard(): LeaseGuard {
  const storage = new AsyncLocalStorage<() => boolean>();
  const previous = getGlobalDispatcher();
  setGlobalDispatcher(new GuardedDispatcher(previous, storage));
  return {
    run: (valid, fn) => storage.run(valid, fn),
    uninstall: () => setGlobalDispatcher(previous),
  };
}
