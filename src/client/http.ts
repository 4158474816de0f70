import type { FieldProblem, Problem } from "./types.js";

/**
 * Every failure the client reports. `status` is the HTTP status, or 0 when
 * no server answered (`code` "connection_failed", "timeout",
 * "stream_disconnected"); `code` is the API's stable error code otherwise.
 */
export class CapstanApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly detail: string;
  readonly fields: FieldProblem[];
  readonly requestId: string | undefined;
  /** Seconds from `Retry-After`, when the server sent one. */
  readonly retryAfter: number | undefined;
  readonly problem: Problem | undefined;

  constructor(
    init: {
      status: number;
      code: string;
      detail: string;
      fields?: FieldProblem[];
      requestId?: string;
      retryAfter?: number;
      problem?: Problem;
    },
    options?: { cause?: unknown },
  ) {
    super(`${init.status ? init.status + " " : ""}${init.code}: ${init.detail}`, options);
    this.name = "CapstanApiError";
    this.status = init.status;
    this.code = init.code;
    this.detail = init.detail;
    this.fields = init.fields ?? [];
    this.requestId = init.requestId;
    this.retryAfter = init.retryAfter;
    this.problem = init.problem;
  }
}

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface TransportOptions {
  baseUrls: string[];
  apiKey: string;
  fetch: FetchLike;
  timeoutMs: number;
  headers: Record<string, string>;
}

export interface RequestOptions {
  query?: Record<string, string | number | undefined>;
  body?: unknown;
  headers?: Record<string, string>;
  timeoutMs?: number;
  signal?: AbortSignal;
}

function isProblem(v: unknown): v is Problem {
  return typeof v === "object" && v !== null && typeof (v as Problem).code === "string";
}

/** Turn a non-2xx response into a CapstanApiError (reads the body). */
export async function errorFrom(res: Response): Promise<CapstanApiError> {
  let body: unknown;
  const text = await res.text().catch(() => "");
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  const ra = res.headers.get("retry-after");
  const retryAfter = ra !== null && /^\d+$/.test(ra) ? Number(ra) : undefined;
  const requestId = res.headers.get("x-request-id") ?? undefined;
  if (isProblem(body)) {
    return new CapstanApiError({
      status: res.status,
      code: body.code,
      detail: typeof body.detail === "string" ? body.detail : res.statusText,
      ...(body.fields ? { fields: body.fields } : {}),
      requestId: body.request_id ?? requestId,
      ...(retryAfter !== undefined ? { retryAfter } : {}),
      problem: body,
    });
  }
  return new CapstanApiError({
    status: res.status,
    code: `http_${res.status}`,
    detail: text.slice(0, 500) || res.statusText,
    ...(requestId ? { requestId } : {}),
    ...(retryAfter !== undefined ? { retryAfter } : {}),
  });
}

const ROTATE_ON_STATUS = new Set([502, 503, 504]);

/**
 * HTTP over one or more base URLs. A connection failure or timeout (and a
 * 502/503/504, e.g. a replica shutting down) moves on to the next URL, each
 * tried at most once per call; the URL that worked is kept for later calls.
 * POSTs are only ever sent again because they carry an Idempotency-Key (the
 * client adds one when the caller gave none).
 */
export class Transport {
  private current = 0;

  constructor(private readonly opts: TransportOptions) {
    if (opts.baseUrls.length === 0) throw new TypeError("capstan client: baseUrl or baseUrls is required");
  }

  /**
   * Send and return the raw response (any status) with `done()`, which ends
   * the timeout: call it once the body is read (or at once for streams).
   * Throws CapstanApiError when no server answered.
   */
  async send(
    method: string,
    path: string,
    ro: RequestOptions = {},
  ): Promise<{ res: Response; done: () => void }> {
    const n = this.opts.baseUrls.length;
    let lastErr: unknown;
    for (let attempt = 0; attempt < n; attempt++) {
      const index = this.current;
      const base = this.opts.baseUrls[index]!;
      const url = base.replace(/\/+$/, "") + path + queryString(ro.query);
      const timeoutMs = ro.timeoutMs ?? this.opts.timeoutMs;
      const timeout = new AbortController();
      const timer = setTimeout(
        () => timeout.abort(new DOMException(`no answer within ${timeoutMs} ms`, "TimeoutError")),
        timeoutMs,
      );
      const done = (): void => clearTimeout(timer);
      const signal = ro.signal ? AbortSignal.any([ro.signal, timeout.signal]) : timeout.signal;
      const headers: Record<string, string> = {
        accept: "application/json",
        ...this.opts.headers,
        ...ro.headers,
        authorization: `Bearer ${this.opts.apiKey}`,
      };
      if (ro.body !== undefined) headers["content-type"] = "application/json";
      try {
        const res = await this.opts.fetch(url, {
          method,
          headers,
          ...(ro.body !== undefined ? { body: JSON.stringify(ro.body) } : {}),
          signal,
        });
        if (ROTATE_ON_STATUS.has(res.status) && attempt < n - 1) {
          done();
          await res.body?.cancel().catch(() => {});
          this.rotate(index);
          continue;
        }
        return { res, done };
      } catch (err) {
        done();
        if (ro.signal?.aborted) throw ro.signal.reason ?? err;
        lastErr = err;
        this.rotate(index);
      }
    }
    const timedOut = lastErr instanceof Error && lastErr.name === "TimeoutError";
    throw new CapstanApiError(
      {
        status: 0,
        code: timedOut ? "timeout" : "connection_failed",
        detail: `no Capstan server answered ${method} ${path} (${lastErr instanceof Error ? lastErr.message : String(lastErr)})`,
      },
      { cause: lastErr },
    );
  }

  /** Send and decode a JSON answer; non-2xx becomes CapstanApiError. */
  async json<T>(method: string, path: string, ro: RequestOptions = {}): Promise<T> {
    const { res, done } = await this.send(method, path, ro);
    try {
      if (!res.ok) throw await errorFrom(res);
      return (await res.json()) as T;
    } catch (err) {
      if (err instanceof CapstanApiError) throw err;
      if (ro.signal?.aborted) throw ro.signal.reason ?? err;
      const timedOut = err instanceof Error && err.name === "TimeoutError";
      throw new CapstanApiError(
        {
          status: res.status,
          code: timedOut ? "timeout" : "invalid_response",
          detail: `reading the answer to ${method} ${path} failed: ${err instanceof Error ? err.message : String(err)}`,
        },
        { cause: err },
      );
    } finally {
      done();
    }
  }

  private rotate(from: number): void {
    // Only move on if no concurrent call already did.
    if (this.current === from) this.current = (from + 1) % this.opts.baseUrls.length;
  }
}

function queryString(q: RequestOptions["query"]): string {
  if (!q) return "";
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined) p.set(k, String(v));
  const s = p.toString();
  return s ? "?" + s : "";
}
