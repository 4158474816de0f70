-- Capstan schema, version 1. Forward-only: never edit a released migration,
-- add a new numbered file instead.

CREATE TABLE tenants (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name            text NOT NULL UNIQUE,
  -- Max runs in `running` at once for this tenant (NULL: no cap).
  max_concurrency integer CHECK (max_concurrency IS NULL OR max_concurrency > 0),
  -- Max runs queued + running + waiting (NULL: the server default).
  max_pending     integer CHECK (max_pending IS NULL OR max_pending > 0),
  -- Round-robin cursor for fair claiming across tenants.
  last_claimed_at timestamptz,
  created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  name         text,
  -- SHA-256 of the secret; the secret itself is shown once and never stored.
  key_hash     bytea NOT NULL UNIQUE,
  prefix       text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  revoked_at   timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE threads (
  id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  metadata   jsonb NOT NULL DEFAULT '{}',
  -- Allocator for message seq, advanced under this row's lock.
  last_seq   bigint NOT NULL DEFAULT 0,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX threads_tenant_created ON threads (tenant_id, created_at, id);

CREATE TABLE messages (
  thread_id  uuid NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
  seq        bigint NOT NULL CHECK (seq > 0),
  role       text NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'system')),
  content    jsonb NOT NULL,
  run_id     uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (thread_id, seq)
);

CREATE TABLE runs (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  -- Global enqueue order: FIFO per thread and the tie-breaker within a tenant.
  seq              bigserial NOT NULL UNIQUE,
  tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  thread_id        uuid NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
  agent            text NOT NULL,
  input            jsonb NOT NULL,
  metadata         jsonb NOT NULL DEFAULT '{}',
  status           text NOT NULL
                   CHECK (status IN ('queued', 'running', 'waiting', 'succeeded', 'failed', 'cancelled')),
  -- True while this run is the head of its thread (the one run that may be
  -- claimed, running or waiting). Maintained under the thread row's lock.
  ready            boolean NOT NULL DEFAULT false,
  multitask        text NOT NULL CHECK (multitask IN ('enqueue', 'reject', 'interrupt')),
  priority         integer NOT NULL DEFAULT 0,
  attempts         integer NOT NULL DEFAULT 0,
  max_attempts     integer NOT NULL CHECK (max_attempts > 0),
  lease_owner      text,
  lease_expires_at timestamptz,
  -- Fencing token: incremented by every claim; every journal write checks it.
  lease_epoch      integer NOT NULL DEFAULT 0,
  idempotency_key  text,
  request_hash     text,
  -- Seq of the run's input message once appended to the thread.
  input_seq        bigint,
  input_tokens     bigint NOT NULL DEFAULT 0,
  output_tokens    bigint NOT NULL DEFAULT 0,
  error            jsonb,
  -- Why the run is waiting (approval, unknown side effect), and the decision.
  wait             jsonb,
  resume           jsonb,
  -- Allocator for persisted event ids (monotonic per run).
  last_event_id    bigint NOT NULL DEFAULT 0,
  created_at       timestamptz NOT NULL DEFAULT now(),
  queued_at        timestamptz NOT NULL DEFAULT now(),
  started_at       timestamptz,
  finished_at      timestamptz,
  updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX runs_idempotency ON runs (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- The claim: ready queued runs of a tenant, by priority then age.
CREATE INDEX runs_claimable ON runs (tenant_id, priority DESC, seq) WHERE status = 'queued' AND ready;
-- Per-thread head lookups and promotion.
CREATE INDEX runs_thread_pending ON runs (thread_id, seq) WHERE status IN ('queued', 'running', 'waiting');
-- Lease expiry sweep.
CREATE INDEX runs_lease_expiry ON runs (lease_expires_at) WHERE status = 'running';
-- Per-tenant caps (running, pending).
CREATE INDEX runs_tenant_active ON runs (tenant_id, status) WHERE status IN ('queued', 'running', 'waiting');
-- Listing and retention.
CREATE INDEX runs_thread_created ON runs (thread_id, seq);
CREATE INDEX runs_finished ON runs (finished_at) WHERE finished_at IS NOT NULL;

-- The step journal: one row per LLM call or tool call, keyed on the natural
-- key (run_id, step_no). A tool row is written as an intent ('started')
-- before the tool runs and completed with its outcome after.
CREATE TABLE steps (
  run_id              uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
  step_no             integer NOT NULL CHECK (step_no >= 0),
  kind                text NOT NULL CHECK (kind IN ('llm', 'tool')),
  status              text NOT NULL CHECK (status IN ('started', 'completed', 'failed')),
  attempt             integer NOT NULL,
  epoch               integer NOT NULL,
  tool_name           text,
  tool_call_id        text,
  effect              text CHECK (effect IN ('pure', 'idempotent', 'side-effect')),
  idempotency_key     text,
  input               jsonb,
  output              jsonb,
  error               jsonb,
  input_tokens        integer,
  output_tokens       integer,
  cached_input_tokens integer,
  started_at          timestamptz NOT NULL DEFAULT now(),
  finished_at         timestamptz,
  PRIMARY KEY (run_id, step_no)
);

-- Coarse run events (not token deltas), persisted so streams can be rebuilt
-- when the Redis stream is gone. Ids are gap-free and monotonic per run.
CREATE TABLE run_events (
  run_id     uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
  id         bigint NOT NULL CHECK (id > 0),
  type       text NOT NULL,
  data       jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (run_id, id)
);

-- Idempotency for POSTs that do not create runs (create thread, cancel,
-- resume). Run creation uses runs.idempotency_key in the same transaction.
CREATE TABLE idempotency_keys (
  tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  key           text NOT NULL,
  request_hash  text NOT NULL,
  status_code   integer NOT NULL,
  response      jsonb NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
