-- Budget settlement: drop a reservation (if still live) and count what the call used
-- (../budget-store.ts, createRedisBudgetStore.settle).
-- KEYS: as budget-reserve.lua, four per period p: U (hash used/sync), R (reserved sum),
--   Z (zset id -> expiry), A (hash id -> amount).
-- ARGV[1]: reservation id, ARGV[2]: actual tokens used, ARGV[3]: n (periods).
-- Reply: {1} when the reservation was still live in some period, else {0}.
--
-- `actual` is added only to used counters that exist: a missing one is asked for a
-- seed from Postgres by the next reserve (see ../budget-store.ts).
local id = ARGV[1]
local actual = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local found = 0
for p = 1, n do
  local U, R, Z, A = KEYS[4*p-3], KEYS[4*p-2], KEYS[4*p-1], KEYS[4*p]
  local a = tonumber(redis.call('HGET', A, id))
  if a then
    redis.call('DECRBY', R, a)
    redis.call('HDEL', A, id)
    redis.call('ZREM', Z, id)
    found = 1
  end
  if actual > 0 and redis.call('EXISTS', U) == 1 then
    redis.call('HINCRBY', U, 'used', actual)
  end
end
return {found}
