import type { Embedder } from "../agent/embeddings.js";
import type { BudgetGuard } from "../cost/budget.js";
import type { LlmCache, ToolCache } from "../cost/cache.js";
import type { ProviderLimiter } from "../cost/provider-limits.js";
import type { LeaseGuard } from "./lease-guard.js";

/**
 * Optional services of the reasoning loop. Absent pieces simply do nothing
 * (no budget, no provider limit, no cache, no memory), so tests and embedded
 * use can leave them out.
 */
export interface RunServices {
  cost?: {
    budget: BudgetGuard;
    limiter: ProviderLimiter;
    llmCache: LlmCache;
    toolCache: ToolCache;
    /** Output cap assumed (and passed) for budgeted calls of agents without maxOutputTokens. */
    defaultMaxOutputTokens: number;
  };
  memory?: { embedder: Embedder };
  /** Runs each tool call so its fetch requests are written only while the lease holds. */
  leaseGuard?: Pick<LeaseGuard, "run">;
}
