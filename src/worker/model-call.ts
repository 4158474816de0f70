import { APICallError } from "@ai-sdk/provider";
import { streamText, type LanguageModel, type ModelMessage, type ToolSet } from "ai";
import type { LlmResponse } from "./messages.js";

export interface RetryPolicy {
  maxRetries: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxRetries: 6, baseDelayMs: 500, maxDelayMs: 30_000 };

export interface ModelCallInput {
  model: LanguageModel;
  system: string;
  messages: ModelMessage[];
  tools: ToolSet;
  signal: AbortSignal;
  temperature?: number;
  maxOutputTokens?: number;
  retry?: RetryPolicy;
  /** Text as it streams (the caller batches it into delta events). */
  onDelta: (text: string) => void;
  /** A retryable failure: the partial text so far must be discarded by readers. */
  onRetry: (info: { attempt: number; delayMs: number; error: string; status?: number }) => void;
  /** Injected for tests; defaults to a timer that honours the signal. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

export interface ModelCallResult {
  response: LlmResponse;
  usage: { inputTokens: number; outputTokens: number; cachedInputTokens?: number };
}

/** A model failure that retrying cannot fix (bad request, auth, unknown model…). */
export class ModelError extends Error {
  constructor(
    message: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = "ModelError";
  }
}

/**
 * One LLM call, streamed, with retries on 429, 5xx and network errors:
 * exponential backoff with full jitter, or exactly the server's
 * `Retry-After` / `retry-after-ms` when it sends one. Tools are passed
 * without `execute`, so the SDK returns the tool calls and runs nothing:
 * tool execution is journaled by the worker.
 */
export async function callModel(input: ModelCallInput): Promise<ModelCallResult> {
  const policy = input.retry ?? DEFAULT_RETRY;
  const sleep = input.sleep ?? abortableSleep;
  for (let attempt = 0; ; attempt++) {
    try {
      return await streamOnce(input);
    } catch (err) {
      if (input.signal.aborted) throw input.signal.reason ?? err;
      const retry = classify(err);
      if (!retry.retryable || attempt >= policy.maxRetries) {
        throw new ModelError(
          `model call failed${retry.status ? ` with HTTP ${retry.status}` : ""}: ${errorMessage(err)}` +
            (retry.retryable ? ` (gave up after ${attempt + 1} attempts)` : ""),
          retry.status,
        );
      }
      const backoff = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** attempt);
      const delayMs = retry.retryAfterMs ?? Math.round(Math.random() * backoff);
      input.onRetry({ attempt: attempt + 1, delayMs, error: errorMessage(err), status: retry.status });
      await sleep(delayMs, input.signal);
    }
  }
}

async function streamOnce(input: ModelCallInput): Promise<ModelCallResult> {
  const result = streamText({
    model: input.model,
    system: input.system,
    messages: input.messages,
    tools: input.tools,
    abortSignal: input.signal,
    maxRetries: 0,
    // Errors arrive as `error` parts below and are classified there; the
    // SDK's default handler would also print them to the console.
    onError: () => {},
    ...(input.temperature !== undefined ? { temperature: input.temperature } : {}),
    ...(input.maxOutputTokens !== undefined ? { maxOutputTokens: input.maxOutputTokens } : {}),
  });
  let text = "";
  const toolCalls: LlmResponse["toolCalls"] = [];
  let finishReason = "unknown";
  let usage: ModelCallResult["usage"] = { inputTokens: 0, outputTokens: 0 };
  for await (const part of result.fullStream) {
    switch (part.type) {
      case "text-delta":
        text += part.text;
        input.onDelta(part.text);
        break;
      case "tool-call":
        toolCalls.push({ toolCallId: part.toolCallId, toolName: part.toolName, input: part.input });
        break;
      case "finish": {
        finishReason = part.finishReason;
        const u = part.totalUsage;
        usage = {
          inputTokens: u.inputTokens ?? 0,
          outputTokens: u.outputTokens ?? 0,
          ...(u.inputTokenDetails?.cacheReadTokens !== undefined
            ? { cachedInputTokens: u.inputTokenDetails.cacheReadTokens }
            : {}),
        };
        break;
      }
      case "error":
        throw part.error;
      case "abort":
        throw input.signal.reason ?? new Error("model call aborted");
      default:
        break;
    }
  }
  return { response: { text, toolCalls, finishReason }, usage };
}

interface RetryVerdict {
  retryable: boolean;
  status?: number;
  retryAfterMs?: number;
}

function classify(err: unknown): RetryVerdict {
  if (APICallError.isInstance(err)) {
    const status = err.statusCode;
    const retryable =
      status === undefined || status === 408 || status === 409 || status === 429 || status >= 500;
    return { retryable, status, retryAfterMs: retryAfter(err.responseHeaders) };
  }
  const cause = err instanceof Error ? err.cause : undefined;
  if (cause && cause !== err) {
    const inner = classify(cause);
    if (inner.status !== undefined) return inner;
  }
  // Network-level failures (connection refused/reset, socket timeouts).
  const msg = errorMessage(err);
  const retryable =
    /ECONNRESET|ECONNREFUSED|ETIMEDOUT|EPIPE|socket hang up|fetch failed|terminated|network/i.test(msg);
  return { retryable };
}

/** `retry-after-ms` (OpenAI), `retry-after` in seconds or as an HTTP date. Capped at 10 minutes. */
export function retryAfter(headers: Record<string, string> | undefined): number | undefined {
  if (!headers) return undefined;
  const lower = Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  const cap = (ms: number) => Math.max(0, Math.min(ms, 600_000));
  const ms = Number(lower["retry-after-ms"]);
  if (lower["retry-after-ms"] !== undefined && Number.isFinite(ms)) return cap(ms);
  const ra = lower["retry-after"];
  if (ra === undefined) return undefined;
  const secs = Number(ra);
  if (Number.isFinite(secs)) return cap(secs * 1000);
  const date = Date.parse(ra);
  return Number.isNaN(date) ? undefined : cap(date - Date.now());
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason as Error);
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason as Error);
    };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}
