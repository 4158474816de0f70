/** Waiting that an AbortSignal ends: the one abortable sleep of the codebase. */
import { setTimeout as delay } from "node:timers/promises";

/** Longest timer Node accepts (a longer one would fire after 1 ms). */
const MAX_TIMER_MS = 2_147_483_647;

/**
 * What an aborted wait rejects with: the signal's reason, as callers that
 * abort with their own error (a lost lease, a cancelled run) expect to see it
 * again; a reason that is not an Error is wrapped (as its `cause`).
 */
export function abortReason(signal: AbortSignal): Error {
  const r: unknown = signal.reason;
  return r instanceof Error ? r : new Error("aborted", { cause: r });
}

/**
 * Resolves after `ms` (clamped to 0..2^31-1; 0 still waits for a timer, so a
 * retry loop yields to the event loop), or rejects with `abortReason(signal)`
 * as soon as the signal aborts (at once when it already has).
 */
export async function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  try {
    await delay(Math.max(0, Math.min(ms, MAX_TIMER_MS)), undefined, signal ? { signal } : undefined);
  } catch (err) {
    // node:timers/promises rejects with its own AbortError (the reason as `cause`).
    if (signal?.aborted) throw abortReason(signal);
    throw err;
  }
}
