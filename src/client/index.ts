/**
 * The typed Capstan client (`import { createClient } from "capstan/client"`).
 * No dependencies beyond `fetch`, so it runs in Node ≥ 20, browsers, Deno
 * and workers alike.
 *
 *   const capstan = createClient({ baseUrl: "http://127.0.0.1:7070", apiKey });
 *   const thread = await capstan.threads.create();
 *   const run = await capstan.runs.create(thread.id, { agent: "support", input: "Hi" });
 *   for await (const ev of capstan.runs.stream(run.id)) console.log(ev.event, ev.data);
 */
import { Transport, type FetchLike } from "./http.js";
import { streamRunEvents, type StreamOptions, type StreamRetryOptions } from "./stream.js";
import type {
  CreateRunParams,
  MessagePage,
  ResumeParams,
  Run,
  RunStreamEvent,
  StepList,
  Thread,
} from "./types.js";

export { CapstanApiError, type FetchLike } from "./http.js";
export { SseParser, type SseMessage, type SseParserOptions } from "./sse-parser.js";
export type { StreamOptions, StreamRetryOptions } from "./stream.js";
export type * from "./types.js";

export interface ClientOptions {
  /** One server, e.g. "http://127.0.0.1:7070". */
  baseUrl?: string;
  /** Several replicas: tried in order, moving on when one cannot be reached. */
  baseUrls?: string[];
  apiKey: string;
  /** A fetch implementation (default: the global one). */
  fetch?: FetchLike;
  /** Per-request timeout (the whole exchange). Default 30,000 ms. */
  timeoutMs?: number;
  /** Extra headers on every request. */
  headers?: Record<string, string>;
  /** Reconnection of `runs.stream`. */
  stream?: Partial<StreamRetryOptions>;
}

export interface PostOptions {
  /**
   * Makes the request safe to retry. When absent, the client generates one per
   * call, so its own retries (to another replica) never apply it twice.
   */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

export interface CapstanClient {
  threads: {
    create(params?: { metadata?: Record<string, unknown> }, opts?: PostOptions): Promise<Thread>;
    get(threadId: string, opts?: { signal?: AbortSignal }): Promise<Thread>;
    messages(
      threadId: string,
      query?: { after?: number; limit?: number; signal?: AbortSignal },
    ): Promise<MessagePage>;
  };
  runs: {
    create(threadId: string, params: CreateRunParams, opts?: PostOptions): Promise<Run>;
    get(runId: string, opts?: { signal?: AbortSignal }): Promise<Run>;
    /** Resolves when the run is terminal or waiting, or after `timeout` seconds (max 60) with its state. */
    wait(runId: string, opts?: { timeout?: number; signal?: AbortSignal }): Promise<Run>;
    steps(runId: string, opts?: { signal?: AbortSignal }): Promise<StepList>;
    cancel(runId: string, opts?: PostOptions): Promise<Run>;
    resume(runId: string, params: ResumeParams, opts?: PostOptions): Promise<Run>;
    /** The run's events; reconnects by itself and ends after the terminal event. */
    stream(runId: string, opts?: StreamOptions): AsyncGenerator<RunStreamEvent, void, undefined>;
  };
}

const newKey = (): string => globalThis.crypto.randomUUID();
const seg = (id: string): string => encodeURIComponent(id);

export function createClient(options: ClientOptions): CapstanClient {
  const baseUrls = options.baseUrls ?? (options.baseUrl ? [options.baseUrl] : []);
  const fetchImpl = options.fetch ?? ((input: string, init?: RequestInit) => globalThis.fetch(input, init));
  const t = new Transport({
    baseUrls,
    apiKey: options.apiKey,
    fetch: fetchImpl,
    timeoutMs: options.timeoutMs ?? 30_000,
    headers: options.headers ?? {},
  });
  const retry: StreamRetryOptions = {
    maxRetries: options.stream?.maxRetries ?? 8,
    initialDelayMs: options.stream?.initialDelayMs ?? 250,
    maxDelayMs: options.stream?.maxDelayMs ?? 10_000,
  };

  const post = <T>(path: string, body: unknown, opts: PostOptions = {}): Promise<T> =>
    t.json<T>("POST", path, {
      body,
      headers: { "idempotency-key": opts.idempotencyKey ?? newKey() },
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
  const get = <T>(
    path: string,
    query?: Record<string, string | number | undefined>,
    signal?: AbortSignal,
    timeoutMs?: number,
  ) =>
    t.json<T>("GET", path, {
      ...(query ? { query } : {}),
      ...(signal ? { signal } : {}),
      ...(timeoutMs !== undefined ? { timeoutMs } : {}),
    });

  return {
    threads: {
      create: (params = {}, opts) => post<Thread>("/v1/threads", params, opts),
      get: (id, opts) => get<Thread>(`/v1/threads/${seg(id)}`, undefined, opts?.signal),
      messages: (id, q = {}) =>
        get<MessagePage>(`/v1/threads/${seg(id)}/messages`, { after: q.after, limit: q.limit }, q.signal),
    },
    runs: {
      create: (threadId, params, opts) => post<Run>(`/v1/threads/${seg(threadId)}/runs`, params, opts),
      get: (id, opts) => get<Run>(`/v1/runs/${seg(id)}`, undefined, opts?.signal),
      wait: (id, opts = {}) =>
        get<Run>(
          `/v1/runs/${seg(id)}/wait`,
          { timeout: opts.timeout },
          opts.signal,
          // The server holds the request up to `timeout` seconds (default 30, max 60).
          ((opts.timeout ?? 30) + 15) * 1000,
        ),
      steps: (id, opts) => get<StepList>(`/v1/runs/${seg(id)}/steps`, undefined, opts?.signal),
      cancel: (id, opts) => post<Run>(`/v1/runs/${seg(id)}/cancel`, {}, opts),
      resume: (id, params, opts) => post<Run>(`/v1/runs/${seg(id)}/resume`, params, opts),
      stream: (id, opts = {}) => streamRunEvents(t, id, opts, retry),
    },
  };
}
