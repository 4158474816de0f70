-- Capstan schema, version 3: token accounting and budgets (docs/architecture.md#cost-control).
-- Forward-only: never edit a released migration, add a new numbered file.

-- Token usage per tenant, per UTC day, per model: the rollup that budgets,
-- `GET /v1/usage` and cost estimates read. One UPSERT per journaled LLM step,
-- in the same transaction as the step (src/state/usage.ts `recordUsageTx`),
-- so the rollup never disagrees with the journal. It outlives run retention
-- on purpose: pruning finished runs must not erase what was spent.
--
-- input_tokens includes cached_input_tokens (providers report the cached part
-- as a subset of the prompt). llm_calls counts calls that reached the
-- provider; cache_hits counts LLM steps answered by the response cache, whose
-- tokens are 0 here and whose would-be tokens are in tokens_saved.
CREATE TABLE usage_daily (
  tenant_id           uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  day                 date NOT NULL,
  model               text NOT NULL CHECK (length(model) BETWEEN 1 AND 256),
  input_tokens        bigint NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
  output_tokens       bigint NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
  cached_input_tokens bigint NOT NULL DEFAULT 0 CHECK (cached_input_tokens >= 0),
  llm_calls           bigint NOT NULL DEFAULT 0 CHECK (llm_calls >= 0),
  cache_hits          bigint NOT NULL DEFAULT 0 CHECK (cache_hits >= 0),
  tokens_saved        bigint NOT NULL DEFAULT 0 CHECK (tokens_saved >= 0),
  updated_at          timestamptz NOT NULL DEFAULT now(),
  -- Also serves every read: one tenant's days in a range, and a budget's
  -- day or month-to-date sum.
  PRIMARY KEY (tenant_id, day, model)
);

-- Token budgets (input + output tokens) per UTC day and per UTC calendar
-- month. NULL: no budget for that period. 0 blocks every LLM call.
ALTER TABLE tenants
  ADD COLUMN daily_token_budget   bigint CHECK (daily_token_budget IS NULL OR daily_token_budget >= 0),
  ADD COLUMN monthly_token_budget bigint CHECK (monthly_token_budget IS NULL OR monthly_token_budget >= 0);

-- The run's cached input tokens, next to input_tokens / output_tokens.
ALTER TABLE runs ADD COLUMN cached_input_tokens bigint NOT NULL DEFAULT 0;
