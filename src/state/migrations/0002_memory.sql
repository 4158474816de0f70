-- Capstan schema, version 2: long-term memories and conversation summaries.
-- Forward-only: never edit a released migration, add a new numbered file.

-- pgvector when the server has it; the migration succeeds without it. Only
-- "not installed on this server" (0A000 on PostgreSQL 15+, 58P01 before) and
-- "not allowed to create it" (42501) are swallowed; anything else fails the
-- migration. The exception block is a subtransaction, so a failed attempt
-- leaves nothing behind.
DO $$
BEGIN
  CREATE EXTENSION IF NOT EXISTS vector;
EXCEPTION WHEN feature_not_supported OR undefined_file OR insufficient_privilege THEN
  RAISE NOTICE 'pgvector is not available (%): memory search uses the exact O(n) fallback', SQLERRM;
END
$$;

-- One row per memory. Embeddings are stored L2-normalised (by the code, see
-- src/state/memories.ts), so cosine distance = 1 - dot product.
--
-- `embedding` is `vector` (no fixed dimension) when pgvector exists at
-- migration time, else `real[]`; the code detects which from the catalog.
-- Its dimension is `dims`, and `embedding_model` names the model that made
-- it: vectors of different models are not comparable, so every search is
-- scoped to one model (and so to one dims).
--
-- Why no fixed dimension: users pick the model (1536 for
-- text-embedding-3-small, 3072 for -large, 256 for the local lexical one,
-- anything for compatible servers) and may change it; a `vector(1536)`
-- column would make every other choice a schema change. HNSW needs a fixed
-- dimension, so the code creates one partial expression index per dims in
-- use (`ensureVectorIndex`: `((embedding::vector(N))) WHERE dims = N`).
--
-- If pgvector is installed after this migration ran, the column stays
-- real[] and search stays exact; to switch, as a superuser:
--   CREATE EXTENSION vector;
--   ALTER TABLE memories ALTER COLUMN embedding TYPE vector USING embedding::vector;
-- then restart Capstan (it detects the backend once per process).
CREATE TABLE memories (
  id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  -- Scope within a tenant, e.g. one end user ("user:42") or one thread.
  namespace       text NOT NULL CHECK (length(namespace) BETWEEN 1 AND 256),
  -- Optional caller-chosen key, unique per namespace: PUT-by-key upserts, and
  -- the `remember` tool keys by its tool call's idempotency key so a retried
  -- call rewrites the same row instead of adding a duplicate.
  key             text CHECK (key IS NULL OR length(key) BETWEEN 1 AND 256),
  text            text NOT NULL,
  metadata        jsonb NOT NULL DEFAULT '{}',
  embedding       real[] NOT NULL,
  embedding_model text NOT NULL,
  dims            integer NOT NULL CHECK (dims BETWEEN 1 AND 16000),
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  -- NULL: never expires. Expired rows are never returned, and
  -- `expireMemories` deletes them.
  expires_at      timestamptz
);

DO $$
BEGIN
  IF to_regtype('vector') IS NOT NULL THEN
    ALTER TABLE memories ALTER COLUMN embedding TYPE vector USING embedding::vector;
  END IF;
END
$$;

-- Listing and the filter in front of every search (the exact fallback scans
-- one tenant's namespace, not the table).
CREATE INDEX memories_tenant_namespace ON memories (tenant_id, namespace, created_at, id);
CREATE UNIQUE INDEX memories_key ON memories (tenant_id, namespace, key) WHERE key IS NOT NULL;
CREATE INDEX memories_expiry ON memories (expires_at) WHERE expires_at IS NOT NULL;

-- Cosine distance of two L2-normalised real[] vectors: the exact fallback's
-- only formula (used when `embedding` is real[]); NULL when the lengths
-- differ. PL/pgSQL because its loop over array subscripts measured ~1.7x
-- faster than `sum(x * y) FROM unnest(a, b)` in a SQL function; the products
-- are double precision, as pgvector computes them. PARALLEL SAFE so a large
-- namespace is scanned by parallel workers.
CREATE FUNCTION capstan_cosine_distance(a real[], b real[]) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
DECLARE
  dot double precision := 0;
BEGIN
  IF cardinality(a) <> cardinality(b) THEN
    RETURN NULL;
  END IF;
  FOR i IN 1 .. cardinality(a) LOOP
    dot := dot + a[i]::double precision * b[i];
  END LOOP;
  RETURN 1 - dot;
END
$$;

-- Conversation summaries (bounded context). The text of a summary covers the
-- thread's messages 1..to_seq (it folds in the previous summary); from_seq is
-- the first message this summary added (the previous summary's to_seq + 1), so
-- a thread's rows chain without gaps. The thread history is never rewritten.
CREATE TABLE thread_summaries (
  thread_id  uuid NOT NULL REFERENCES threads (id) ON DELETE CASCADE,
  from_seq   bigint NOT NULL CHECK (from_seq > 0),
  to_seq     bigint NOT NULL,
  summary    text NOT NULL,
  -- The run whose summarisation step produced it (no FK: run retention must
  -- not delete summaries).
  run_id     uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  -- Unique per (thread, to_seq): a resumed run saving the same summary again
  -- is a no-op. Also serves "latest summary of a thread".
  PRIMARY KEY (thread_id, to_seq),
  CHECK (to_seq >= from_seq)
);
