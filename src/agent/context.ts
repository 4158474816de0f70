/**
 * Bounded conversation context (pure functions, no I/O).
 *
 * A thread's history grows without bound; a model's context does not. When
 * the history after the latest summary no longer fits the budget, the older
 * part is summarised (an LLM step the worker journals) and the prompt becomes
 * summary + recent messages. The history itself is never rewritten.
 *
 * Summaries chain (src/state/summaries.ts): a summary's text covers messages
 * 1..toSeq, because the summariser is given the previous summary (which
 * covers 1..prev.toSeq) plus messages prev.toSeq+1..toSeq. So ranges are
 * contiguous by construction.
 *
 * The worker's loop, before an LLM call:
 *
 *   for (;;) {
 *     const plan = planContext({ messages: history, summary: latest, budget });
 *     if (!plan.toSummarise) break;            // prompt = summaryToUse + recentMessages
 *     const text = await summarise(buildSummaryRequest(plan.toSummarise, budget));  // journaled
 *     latest = await saveSummary(db, { threadId, ...range(plan.toSummarise), summary: text, runId });
 *   }
 *
 * Each round folds at least one message group in, so the loop ends; usually
 * after one round (several only when the part to fold is larger than the
 * summariser's own budget).
 *
 * Token counts are ESTIMATES: ceil(characters / 4) (about right for English
 * with GPT/Claude tokenisers, high for code and JSON, low for some scripts),
 * with non-string content measured as its JSON, plus 4 tokens per message for
 * role and framing. Leave a margin in `maxTokens` for the error.
 */

export interface ContextMessage {
  /** The thread seq (1, 2, … ascending). */
  seq: number;
  role: string;
  /** Stored content: a string or AI SDK content parts. */
  content: unknown;
}

export interface ContextSummary {
  /** The summary covers messages 1..toSeq. */
  toSeq: number;
  summary: string;
}

export interface ContextBudget {
  /**
   * Tokens for summary + history messages in the prompt. The caller has
   * already taken out instructions, tool schemas, the output reserve and
   * messages produced earlier in the same run.
   */
  maxTokens: number;
  /**
   * Room kept for a new summary; the summariser is asked to stay under it.
   * Default min(2000, 20% of maxTokens).
   */
  summaryTokens?: number;
  /**
   * When summarising, keep recent messages up to this fraction of the room
   * left after the summary (default 0.5), so the next summarisation is many
   * turns away rather than on every turn.
   */
  recentFraction?: number;
  /** Max tokens of one summariser request (previous summary + messages). Default maxTokens. */
  summariserMaxTokens?: number;
}

export interface Summarisation<M extends ContextMessage = ContextMessage> {
  /** First message folded in: the previous summary's toSeq + 1 (1 when none). */
  fromSeq: number;
  /** Last message folded in; the new summary covers 1..toSeq. */
  toSeq: number;
  /** The previous summary's text (covering 1..fromSeq-1), to fold in; null for the first. */
  previousSummary: string | null;
  /** The messages fromSeq..toSeq (those the caller passed). */
  messages: M[];
  /** Token budget for the new summary. */
  summaryTokens: number;
}

export interface ContextPlan<
  M extends ContextMessage = ContextMessage,
  S extends ContextSummary = ContextSummary,
> {
  /** The summary to put in the prompt (the latest one passed in), or null. */
  summaryToUse: S | null;
  /** The history messages to send after the summary, in order. */
  recentMessages: M[];
  /**
   * Null: the prompt is summaryToUse + recentMessages and fits (or cannot be
   * made to fit: see `fits`). Otherwise: summarise this first, save it, and
   * plan again.
   */
  toSummarise: Summarisation<M> | null;
  /** Estimated tokens of summary + recentMessages (with summaryTokens standing in for a summary to be made). */
  estimatedTokens: number;
  /**
   * False only when the newest message group alone exceeds the budget (e.g. a
   * huge tool result): nothing can be summarised away without losing the
   * current turn. The caller should fail the run clearly or truncate.
   */
  fits: boolean;
}

export const MESSAGE_OVERHEAD_TOKENS = 4;
/** The summariser's instructions, estimated (see SUMMARY_SYSTEM). */
const SUMMARISER_OVERHEAD_TOKENS = 200;
/** Longest rendering of one message given to the summariser (characters). */
const MAX_RENDERED_MESSAGE_CHARS = 8000;

/** ceil(characters / 4). */
export function estimateTextTokens(text: string): number {
  return Math.ceil(text.length / 4);
}

/** Estimated tokens of one message: its content (JSON unless a string) plus framing. */
export function estimateMessageTokens(m: { content: unknown }): number {
  const c = m.content;
  const chars = typeof c === "string" ? c.length : (JSON.stringify(c ?? null)?.length ?? 0);
  return MESSAGE_OVERHEAD_TOKENS + Math.ceil(chars / 4);
}

/** Tokens a summary takes in the prompt (as rendered by `renderSummary`). */
export function estimateSummaryTokens(s: ContextSummary): number {
  return estimateMessageTokens({ content: renderSummary(s) });
}

/**
 * A group of messages that must stay together: a message plus the `tool`
 * messages right after it (an assistant message with tool calls and their
 * results). Splitting them would send results without their calls (or calls
 * without results), which providers reject.
 */
interface Group {
  /** Index of the first message in the tail. */
  start: number;
  /** Index after the last. */
  end: number;
  tokens: number;
}

function groups(tail: ContextMessage[]): Group[] {
  const out: Group[] = [];
  tail.forEach((m, i) => {
    const t = estimateMessageTokens(m);
    const last = out[out.length - 1];
    if (m.role === "tool" && last) {
      last.end = i + 1;
      last.tokens += t;
    } else {
      out.push({ start: i, end: i + 1, tokens: t });
    }
  });
  return out;
}

function resolveBudget(b: ContextBudget): Required<ContextBudget> {
  if (!Number.isFinite(b.maxTokens) || b.maxTokens <= 0) {
    throw new RangeError(`context budget maxTokens must be positive (got ${b.maxTokens})`);
  }
  const summaryTokens = b.summaryTokens ?? Math.min(2000, Math.floor(b.maxTokens * 0.2));
  const recentFraction = b.recentFraction ?? 0.5;
  if (!(summaryTokens > 0 && summaryTokens < b.maxTokens)) {
    throw new RangeError(`context budget summaryTokens must be in 1..maxTokens-1 (got ${summaryTokens})`);
  }
  if (!(recentFraction > 0 && recentFraction <= 1)) {
    throw new RangeError(`context budget recentFraction must be in (0, 1] (got ${recentFraction})`);
  }
  return {
    maxTokens: b.maxTokens,
    summaryTokens,
    recentFraction,
    summariserMaxTokens: b.summariserMaxTokens ?? b.maxTokens,
  };
}

/**
 * Decides what of the thread goes into the prompt. `messages` is the
 * thread's history in seq order (messages at or before the summary's toSeq
 * are ignored, so passing the whole history is fine); `summary` is the
 * latest stored summary. Pure and deterministic: the same input gives the
 * same plan, so a resumed run makes the same decision.
 */
export function planContext<M extends ContextMessage, S extends ContextSummary>(input: {
  messages: readonly M[];
  summary: S | null;
  budget: ContextBudget;
}): ContextPlan<M, S> {
  const budget = resolveBudget(input.budget);
  const { summary } = input;
  const coveredTo = summary?.toSeq ?? 0;
  let prevSeq = -Infinity;
  for (const m of input.messages) {
    if (!(m.seq > prevSeq))
      throw new RangeError(`context: message seqs must ascend (${m.seq} after ${prevSeq})`);
    prevSeq = m.seq;
  }
  const tail = input.messages.filter((m) => m.seq > coveredTo);
  const gs = groups(tail);
  const summaryCost = summary ? estimateSummaryTokens(summary) : 0;
  const tailCost = gs.reduce((n, g) => n + g.tokens, 0);

  if (summaryCost + tailCost <= budget.maxTokens || gs.length <= 1) {
    // Everything fits, or the tail is one group that cannot be split.
    return {
      summaryToUse: summary,
      recentMessages: tail,
      toSummarise: null,
      estimatedTokens: summaryCost + tailCost,
      fits: summaryCost + tailCost <= budget.maxTokens,
    };
  }

  // Keep the newest groups within the target; always the newest one.
  const reserve = budget.summaryTokens + MESSAGE_OVERHEAD_TOKENS;
  const room = budget.maxTokens - reserve;
  const target = Math.floor(room * budget.recentFraction);
  let first = gs.length - 1;
  let kept = gs[first]!.tokens;
  while (first > 0 && kept + gs[first - 1]!.tokens <= target) {
    first--;
    kept += gs[first]!.tokens;
  }
  // Prefer to start the recent part at a user message (some providers want
  // the conversation to open with one): drop to the next user-led group.
  if (tail[gs[first]!.start]!.role !== "user") {
    for (let i = first + 1; i < gs.length; i++) {
      if (tail[gs[i]!.start]!.role === "user") {
        for (let j = first; j < i; j++) kept -= gs[j]!.tokens;
        first = i;
        break;
      }
    }
  }
  if (first === 0) {
    // The newest group alone is everything after the summary: nothing to fold.
    return {
      summaryToUse: summary,
      recentMessages: tail,
      toSummarise: null,
      estimatedTokens: summaryCost + tailCost,
      fits: summaryCost + tailCost <= budget.maxTokens,
    };
  }

  // Fold groups 0..first-1, as many as one summariser request can take (at
  // least one group); the caller plans again after saving.
  const prevCost = summary ? estimateTextTokens(summary.summary) : 0;
  const summariserRoom = budget.summariserMaxTokens - SUMMARISER_OVERHEAD_TOKENS - prevCost;
  let end = 1;
  let folded = gs[0]!.tokens;
  while (end < first && folded + gs[end]!.tokens <= summariserRoom) {
    folded += gs[end]!.tokens;
    end++;
  }
  const foldedMessages = tail.slice(0, gs[end - 1]!.end);
  const recentMessages = tail.slice(gs[first]!.start);
  return {
    summaryToUse: summary,
    recentMessages,
    toSummarise: {
      fromSeq: coveredTo + 1,
      toSeq: foldedMessages[foldedMessages.length - 1]!.seq,
      previousSummary: summary?.summary ?? null,
      messages: foldedMessages,
      summaryTokens: budget.summaryTokens,
    },
    estimatedTokens: reserve + kept,
    fits: kept <= room,
  };
}

/* ------------------------------------------------------------------------- */

const SUMMARY_SYSTEM =
  "You maintain a running summary of a conversation between a user and an AI assistant. " +
  "You are given the previous summary (if any) and the messages that follow it. Write a new " +
  "summary that replaces the previous one: keep every fact, decision, name, number, preference, " +
  "open question and commitment that later turns may need, including those from the previous " +
  "summary; drop greetings and repetition. Write plain prose or short bullet points in the " +
  "conversation's language. Output only the summary.";

/**
 * The summariser request for a plan's `toSummarise`: system instructions and
 * a prompt with the previous summary and the messages as a transcript (each
 * message cut to 8000 characters). Pass `maxOutputTokens: summaryTokens`.
 */
export function buildSummaryRequest(s: Summarisation): {
  system: string;
  prompt: string;
  maxOutputTokens: number;
} {
  const parts: string[] = [];
  parts.push(
    s.previousSummary === null
      ? "There is no previous summary."
      : `Previous summary (messages 1 to ${s.fromSeq - 1}):\n${s.previousSummary}`,
  );
  parts.push(`Messages ${s.fromSeq} to ${s.toSeq}:`);
  for (const m of s.messages) parts.push(`[${m.seq}] ${m.role}: ${contentText(m.content)}`);
  parts.push(
    `Write the new summary of messages 1 to ${s.toSeq} in at most about ${s.summaryTokens * 3} characters.`,
  );
  return { system: SUMMARY_SYSTEM, prompt: parts.join("\n\n"), maxOutputTokens: s.summaryTokens };
}

/** The text that stands for the summarised part of the conversation in a prompt. */
export function renderSummary(s: ContextSummary): string {
  return `Summary of the earlier conversation (messages 1 to ${s.toSeq}):\n${s.summary}`;
}

/**
 * Message content as plain text (text parts, tool calls and results), cut to
 * `maxChars`: the summariser's transcript, and the query text for automatic
 * memory recall.
 */
export function contentText(content: unknown, maxChars = MAX_RENDERED_MESSAGE_CHARS): string {
  let out: string;
  if (typeof content === "string") out = content;
  else if (Array.isArray(content)) out = content.map(renderPart).join("\n");
  else out = JSON.stringify(content ?? null) ?? "";
  return out.length > maxChars ? out.slice(0, maxChars) + " …[truncated]" : out;
}

function renderPart(p: unknown): string {
  if (typeof p !== "object" || p === null) return String(p);
  const part = p as Record<string, unknown>;
  switch (part.type) {
    case "text":
    case "reasoning":
      return typeof part.text === "string" ? part.text : "";
    case "tool-call":
      return `(called tool ${String(part.toolName)} with ${JSON.stringify(part.input ?? null)})`;
    case "tool-result": {
      const output = part.output as { value?: unknown } | undefined;
      return `(tool ${String(part.toolName)} returned ${JSON.stringify(output?.value ?? output ?? null)})`;
    }
    default:
      return JSON.stringify(part);
  }
}
