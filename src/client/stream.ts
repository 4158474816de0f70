import { CapstanApiError, errorFrom, type Transport } from "./http.js";
import { SseParser, type SseMessage } from "./sse-parser.js";
import type { RunStreamEvent } from "./types.js";

export interface StreamOptions {
  /** Resume after this event id ("N" or "N.k"). */
  after?: string;
  signal?: AbortSignal;
}

export interface StreamRetryOptions {
  /** Consecutive failed (re)connections before giving up. Default 8. */
  maxRetries: number;
  /** First reconnect delay when the server advised none with `retry:`. Default 250 ms. */
  initialDelayMs: number;
  /** Cap of the exponential backoff. Default 10,000 ms. */
  maxDelayMs: number;
}

const TERMINAL = new Set(["run.succeeded", "run.failed", "run.cancelled"]);

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal?.reason as Error);
    };
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function parseData(data: string): Record<string, unknown> {
  try {
    const v: unknown = JSON.parse(data);
    return typeof v === "object" && v !== null && !Array.isArray(v)
      ? (v as Record<string, unknown>)
      : { value: v };
  } catch {
    return { text: data };
  }
}

/**
 * A run's events as an async iterator that survives disconnects: after a
 * dropped connection, a server shutdown or a 429/5xx it reconnects (to the
 * next base URL if the current one is down) with `Last-Event-ID`, after the
 * server's `retry:` delay or an exponential backoff with jitter, at most
 * `maxRetries` times in a row (any event received resets the count). It ends
 * after the terminal event, or when the server answers 204 (the run is
 * finished and nothing is left after the cursor). Breaking out of the loop
 * closes the connection.
 */
export async function* streamRunEvents(
  transport: Transport,
  runId: string,
  opts: StreamOptions,
  retry: StreamRetryOptions,
): AsyncGenerator<RunStreamEvent, void, undefined> {
  let lastId = opts.after;
  let failures = 0;
  let serverRetryMs: number | undefined;
  let retryAfterMs: number | undefined;
  const path = `/v1/runs/${encodeURIComponent(runId)}/events`;

  for (;;) {
    let failure: unknown;
    try {
      const { res, done } = await transport.send("GET", path, {
        headers: { accept: "text/event-stream", ...(lastId ? { "last-event-id": lastId } : {}) },
        ...(opts.signal ? { signal: opts.signal } : {}),
      });
      // The connection lives as long as the run: only getting the headers is bounded.
      done();
      if (res.status === 204) return;
      if (!res.ok) {
        const err = await errorFrom(res);
        if (err.status !== 429 && err.status < 500) throw err;
        if (err.retryAfter !== undefined) retryAfterMs = err.retryAfter * 1000;
        failure = err;
      } else if (!res.body) {
        failure = new Error("event stream response has no body");
      } else {
        const queue: SseMessage[] = [];
        const parser = new SseParser({
          onEvent: (m) => queue.push(m),
          onRetry: (ms) => (serverRetryMs = ms),
        });
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            parser.feed(value);
            while (queue.length > 0) {
              const m = queue.shift()!;
              if (m.id) lastId = m.id;
              failures = 0;
              yield { id: m.id, event: m.event, data: parseData(m.data) };
              if (TERMINAL.has(m.event)) return;
            }
          }
          parser.end();
          failure = new Error("the server ended the event stream before the run finished");
        } catch (err) {
          if (opts.signal?.aborted) throw err;
          failure = err;
        } finally {
          await reader.cancel().catch(() => {});
        }
      }
    } catch (err) {
      if (opts.signal?.aborted) throw opts.signal.reason ?? err;
      if (err instanceof CapstanApiError && err.status !== 0 && err.status !== 429 && err.status < 500)
        throw err;
      failure = err;
    }

    failures++;
    if (failures > retry.maxRetries) {
      throw new CapstanApiError(
        {
          status: failure instanceof CapstanApiError ? failure.status : 0,
          code: failure instanceof CapstanApiError ? failure.code : "stream_disconnected",
          detail: `event stream of run ${runId} failed ${failures} times in a row${lastId ? ` (last event ${lastId})` : ""}: ${
            failure instanceof Error ? failure.message : String(failure)
          }`,
        },
        { cause: failure },
      );
    }
    const base = retryAfterMs ?? serverRetryMs ?? retry.initialDelayMs;
    retryAfterMs = undefined;
    const backoff = Math.min(retry.maxDelayMs, base * 2 ** (failures - 1));
    await sleep(backoff * (0.8 + Math.random() * 0.4), opts.signal);
  }
}
