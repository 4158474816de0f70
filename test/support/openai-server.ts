/**
 * A local OpenAI-compatible chat-completions server for tests: the real wire
 * format (SSE `chat.completion.chunk` streaming, tool-call deltas, usage,
 * `[DONE]`; or a plain `chat.completion`), answers decided by a test handler,
 * and error statuses with `Retry-After` to exercise retry and cool-down paths.
 *
 * Only POST /v1/chat/completions is served; anything else is a 404.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** A chat-completions request body as received (only the fields tests usually read are typed). */
export interface ChatCompletionsBody {
  model?: string;
  messages?: Array<Record<string, unknown>>;
  tools?: Array<{ type: string; function: { name: string; description?: string; parameters?: unknown } }>;
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  [key: string]: unknown;
}

export interface TestUsage {
  prompt_tokens: number;
  completion_tokens: number;
  /** Reported as `prompt_tokens_details.cached_tokens` (a subset of prompt_tokens), as OpenAI does. */
  cached_tokens?: number;
}

/** One answered chat-completions request as the server saw it (a provider's billing view). */
export interface RequestRecord {
  index: number;
  /** Date.now() when the request body had arrived (when a provider counts it against its limits). */
  arrivedAt: number;
  /** Date.now() when the answer was complete (or the request failed / the client left). */
  finishedAt: number | undefined;
  /** HTTP status answered. */
  status: number;
  /** Tokens reported in the answer's usage (0 for an error answer). */
  promptTokens: number;
  completionTokens: number;
}

/** What the handler answers for one request. */
export type OpenAiTestReply =
  | { text: string; usage?: TestUsage }
  | { toolCalls: Array<{ name: string; arguments: Record<string, unknown>; id?: string }>; usage?: TestUsage }
  | { status: number; retryAfterSeconds?: number; message?: string };

export interface OpenAiTestServerOptions {
  /** Decides the reply; `requestIndex` counts chat-completions requests from 0. May be async (to delay). */
  handler: (body: ChatCompletionsBody, requestIndex: number) => OpenAiTestReply | Promise<OpenAiTestReply>;
  /** Pause between SSE chunks (ms), to simulate a slow model. Default 0. */
  chunkDelayMs?: number;
}

export interface OpenAiTestServer {
  /** Base URL ending in `/v1`, for `models.compatible.baseURL`. */
  url: string;
  /** JSON bodies of the chat-completions requests received, in order. */
  requests: ChatCompletionsBody[];
  /** Headers of those requests, same order. */
  requestHeaders: IncomingHttpHeaders[];
  /** Timestamps and token usage of those requests, same order. */
  log: RequestRecord[];
  /** Most tokens (prompt + completion) of requests arriving within any `windowMs` (sliding). */
  maxTokensInWindow(windowMs: number): number;
  close(): Promise<void>;
}

/**
 * Most tokens of requests whose arrivals lie within any half-open window
 * [t, t + windowMs): the largest amount a provider counting per sliding window
 * would have seen (a fixed-minute counter never sees more than this).
 */
export function maxTokensInWindow(log: readonly RequestRecord[], windowMs: number): number {
  const xs = [...log].sort((a, b) => a.arrivedAt - b.arrivedAt);
  let best = 0;
  let sum = 0;
  let lo = 0;
  for (const x of xs) {
    sum += x.promptTokens + x.completionTokens;
    while (xs[lo]!.arrivedAt <= x.arrivedAt - windowMs) {
      sum -= xs[lo]!.promptTokens + xs[lo]!.completionTokens;
      lo++;
    }
    best = Math.max(best, sum);
  }
  return best;
}

export async function startOpenAiTestServer(opts: OpenAiTestServerOptions): Promise<OpenAiTestServer> {
  const requests: ChatCompletionsBody[] = [];
  const requestHeaders: IncomingHttpHeaders[] = [];
  const log: RequestRecord[] = [];
  let seq = 0;

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) sendError(res, 500, err instanceof Error ? err.message : String(err));
      else res.destroy();
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "").split("?")[0];
    if (req.method !== "POST" || path !== "/v1/chat/completions") {
      sendError(res, 404, `no route ${req.method ?? ""} ${path ?? ""}`);
      return;
    }
    let body: ChatCompletionsBody;
    try {
      body = JSON.parse(await readBody(req)) as ChatCompletionsBody;
    } catch {
      sendError(res, 400, "request body is not JSON");
      return;
    }
    const index = requests.length;
    requests.push(body);
    requestHeaders.push(req.headers);
    const record: RequestRecord = {
      index,
      arrivedAt: Date.now(),
      finishedAt: undefined,
      status: 200,
      promptTokens: 0,
      completionTokens: 0,
    };
    log.push(record);
    res.once("close", () => (record.finishedAt ??= Date.now()));

    const reply = await opts.handler(body, index);
    if ("status" in reply) {
      record.status = reply.status;
      sendError(res, reply.status, reply.message ?? `test error ${reply.status}`, reply.retryAfterSeconds);
      return;
    }

    const id = `chatcmpl-test-${++seq}`;
    const created = Math.floor(Date.now() / 1000);
    const model = body.model ?? "test-model";
    const text = "text" in reply ? reply.text : "";
    const toolCalls =
      "toolCalls" in reply
        ? reply.toolCalls.map((c, i) => ({
            id: c.id ?? `call_${seq}_${i}`,
            name: c.name,
            arguments: JSON.stringify(c.arguments),
          }))
        : [];
    const finishReason = toolCalls.length > 0 ? "tool_calls" : "stop";
    const promptTokens = reply.usage?.prompt_tokens ?? tokens(JSON.stringify(body.messages ?? []));
    const completionTokens =
      reply.usage?.completion_tokens ?? tokens(text + toolCalls.map((c) => c.name + c.arguments).join(""));
    const usage = {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
      ...(reply.usage?.cached_tokens !== undefined
        ? { prompt_tokens_details: { cached_tokens: reply.usage.cached_tokens } }
        : {}),
    };
    // Billed once the answer is produced, as a provider bills a request it served.
    record.promptTokens = promptTokens;
    record.completionTokens = completionTokens;

    if (body.stream !== true) {
      sendJson(res, 200, {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [
          {
            index: 0,
            message: {
              role: "assistant",
              content: toolCalls.length > 0 && text === "" ? null : text,
              ...(toolCalls.length > 0
                ? {
                    tool_calls: toolCalls.map((c) => ({
                      id: c.id,
                      type: "function",
                      function: { name: c.name, arguments: c.arguments },
                    })),
                  }
                : {}),
            },
            finish_reason: finishReason,
          },
        ],
        usage,
      });
      return;
    }

    res.writeHead(200, {
      "content-type": "text/event-stream",
      "cache-control": "no-cache",
      connection: "keep-alive",
    });
    const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) => ({
      id,
      object: "chat.completion.chunk",
      created,
      model,
      choices,
      ...extra,
    });
    const events: unknown[] = [
      chunk([{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }]),
    ];
    for (const piece of splitWords(text)) {
      events.push(chunk([{ index: 0, delta: { content: piece }, finish_reason: null }]));
    }
    toolCalls.forEach((c, i) => {
      // As OpenAI does: the first delta carries id, type and name; the arguments follow in pieces.
      events.push(
        chunk([
          {
            index: 0,
            delta: {
              tool_calls: [
                { index: i, id: c.id, type: "function", function: { name: c.name, arguments: "" } },
              ],
            },
            finish_reason: null,
          },
        ]),
      );
      for (const piece of splitInParts(c.arguments, 3)) {
        events.push(
          chunk([
            {
              index: 0,
              delta: { tool_calls: [{ index: i, function: { arguments: piece } }] },
              finish_reason: null,
            },
          ]),
        );
      }
    });
    events.push(chunk([{ index: 0, delta: {}, finish_reason: finishReason }]));
    if (body.stream_options?.include_usage === true) {
      // As OpenAI does: usage comes in a last chunk with no choices.
      events.push(chunk([], { usage }));
    }

    for (const ev of events) {
      if (res.destroyed) return;
      res.write(`data: ${JSON.stringify(ev)}\n\n`);
      if (opts.chunkDelayMs) await sleep(opts.chunkDelayMs);
    }
    res.end("data: [DONE]\n\n");
  }

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}/v1`,
    requests,
    requestHeaders,
    log,
    maxTokensInWindow: (windowMs) => maxTokensInWindow(log, windowMs),
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((err) => (err ? reject(err) : resolve()));
      }),
  };
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    req.on("error", reject);
  });
}

function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(data),
    ...headers,
  });
  res.end(data);
}

/** OpenAI's error shape: `{ error: { message, type, code } }`. */
function sendError(res: ServerResponse, status: number, message: string, retryAfterSeconds?: number): void {
  const type =
    status === 429
      ? "rate_limit_error"
      : status >= 500
        ? "server_error"
        : status === 404
          ? "not_found"
          : "invalid_request_error";
  sendJson(
    res,
    status,
    { error: { message, type, code: status === 429 ? "rate_limit_exceeded" : null } },
    retryAfterSeconds === undefined ? {} : { "retry-after": String(retryAfterSeconds) },
  );
}

function tokens(s: string): number {
  return Math.max(1, Math.ceil(s.length / 4));
}

function splitWords(text: string): string[] {
  return text.match(/\S+\s*|\s+/g) ?? [];
}

function splitInParts(s: string, n: number): string[] {
  const size = Math.max(1, Math.ceil(s.length / n));
  const out: string[] = [];
  for (let i = 0; i < s.length; i += size) out.push(s.slice(i, i + size));
  return out.length > 0 ? out : [""];
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
