-- Capstan schema, version 5: whether a tool step was served from the pure-tool cache.
-- Forward-only: never edit a released migration, add a new numbered file.

-- NULL: the tool is not cacheable (or the step predates this column); true:
-- the result came from the cache and the tool did not run; false: it ran
-- (and its result was stored). Shown on the steps API. Nullable, no
-- default: a catalog-only change.
ALTER TABLE steps ADD COLUMN cache_hit boolean;
