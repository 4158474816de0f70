-- Capstan schema, version 6: a per-tenant count of pending runs (queued,
-- running or waiting), for an exact and cheap pending-run cap.
-- Forward-only: never edit a released migration, add a new numbered file.

-- The count is kept by triggers on `runs`, not by the code paths that move
-- runs, so it is exact whatever moves them: enqueue, claim, finish, cancel,
-- interrupt, lease reclaim, retention, a tenant's deletion, or an operator's
-- UPDATE. Only a move into or out of the pending set fires them (claims,
-- suspends and resumes stay inside it), and they are deferred to commit.
--
-- A tenant's count is the sum of its rows. Shard 0 takes every increment; an
-- enqueue locks it until commit and checks the sum against the cap
-- (src/state/scheduler.ts), so enqueues of one tenant decide one at a time
-- and the cap holds exactly. Runs leaving the set decrement shards 1..16 (by
-- run id), so finishing runs of one tenant do not all queue on one row.
-- bigint: shard 0 only grows, the others only shrink.
CREATE TABLE tenant_pending (
  tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
  shard     smallint NOT NULL CHECK (shard BETWEEN 0 AND 16),
  pending   bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (tenant_id, shard)
);

CREATE FUNCTION capstan_count_pending() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
  tenant uuid;
  run uuid;
  delta integer;
BEGIN
  IF TG_OP = 'DELETE' THEN
    tenant := OLD.tenant_id;
    run := OLD.id;
    delta := -1;
  ELSE
    tenant := NEW.tenant_id;
    run := NEW.id;
    delta := CASE WHEN NEW.status IN ('queued', 'running', 'waiting') THEN 1 ELSE -1 END;
  END IF;
  -- The tenant itself may be gone (its deletion cascaded to these runs): nothing to count.
  INSERT INTO tenant_pending AS p (tenant_id, shard, pending)
  SELECT tenant, CASE WHEN delta > 0 THEN 0 ELSE 1 + (hashtext(run::text) & 15) END, delta
  WHERE EXISTS (SELECT 1 FROM tenants WHERE id = tenant)
  ON CONFLICT (tenant_id, shard) DO UPDATE SET pending = p.pending + EXCLUDED.pending;
  RETURN NULL;
END
$$;

-- Hold off writers while the count is backfilled, so no move is missed or counted twice.
LOCK TABLE runs IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO tenant_pending (tenant_id, shard, pending)
SELECT t.id, 0, (SELECT count(*) FROM runs r WHERE r.tenant_id = t.id AND r.status IN ('queued', 'running', 'waiting'))
FROM tenants t;

CREATE CONSTRAINT TRIGGER runs_pending_insert AFTER INSERT ON runs
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  WHEN (NEW.status IN ('queued', 'running', 'waiting'))
  EXECUTE FUNCTION capstan_count_pending();

CREATE CONSTRAINT TRIGGER runs_pending_update AFTER UPDATE OF status ON runs
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  WHEN ((OLD.status IN ('queued', 'running', 'waiting')) IS DISTINCT FROM
        (NEW.status IN ('queued', 'running', 'waiting')))
  EXECUTE FUNCTION capstan_count_pending();

CREATE CONSTRAINT TRIGGER runs_pending_delete AFTER DELETE ON runs
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
  WHEN (OLD.status IN ('queued', 'running', 'waiting'))
  EXECUTE FUNCTION capstan_count_pending();
