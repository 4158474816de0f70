-- Capstan schema, version 6: a per-tenant count of pending runs (queued,
-- running or waiting), for an exact and cheap pending-run cap.
-- Forward-only: never edit a released migration, add a new numbered file.

-- The enqueue transaction locks its tenant's row here and checks the count
-- against the cap (src/state/scheduler.ts `enqueueTx`): concurrent enqueues of
-- one tenant are serialised, so the cap holds exactly, without counting the
-- tenant's pending runs on every enqueue.
--
-- The count is kept by triggers on `runs`, not by the code paths that move
-- runs, so it is exact whatever moves them: enqueue, claim, finish, cancel,
-- interrupt, lease reclaim, retention, a tenant's deletion, or an operator's
-- UPDATE. Only a move into or out of the pending set fires them (claims,
-- suspends and resumes stay inside it). They are deferred to commit, so a
-- finishing run holds its tenant's row only while it commits.
CREATE TABLE tenant_pending (
  tenant_id uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
  pending   integer NOT NULL DEFAULT 0
);

CREATE FUNCTION capstan_count_pending() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
  tenant uuid;
  delta integer := 0;
BEGIN
  IF TG_OP = 'INSERT' THEN
    tenant := NEW.tenant_id;
    delta := 1;
  ELSIF TG_OP = 'DELETE' THEN
    tenant := OLD.tenant_id;
    delta := -1;
  ELSE
    tenant := NEW.tenant_id;
    delta := CASE WHEN NEW.status IN ('queued', 'running', 'waiting') THEN 1 ELSE -1 END;
  END IF;
  -- The tenant itself may be gone (its deletion cascaded to these runs): nothing to count.
  INSERT INTO tenant_pending AS p (tenant_id, pending)
  SELECT tenant, delta WHERE EXISTS (SELECT 1 FROM tenants WHERE id = tenant)
  ON CONFLICT (tenant_id) DO UPDATE SET pending = p.pending + EXCLUDED.pending;
  RETURN NULL;
END
$$;

-- Hold off writers while the count is backfilled, so no move is missed or counted twice.
LOCK TABLE runs IN SHARE ROW EXCLUSIVE MODE;

INSERT INTO tenant_pending (tenant_id, pending)
SELECT t.id, (SELECT count(*) FROM runs r WHERE r.tenant_id = t.id AND r.status IN ('queued', 'running', 'waiting'))
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
