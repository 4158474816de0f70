-- Budget reservation extension: a live holder pushes its expiry to now + ttl
-- (../budget-store.ts, createRedisBudgetStore.extend).
-- KEYS: as budget-reserve.lua, four per period p: U (unused here), R (reserved sum),
--   Z (zset id -> expiry), A (hash id -> amount).
-- ARGV[1]: reservation id, ARGV[2]: ttl ms, ARGV[3]: n (periods).
-- Reply: {1} extended in some period, {0} it already lapsed everywhere.
local id = ARGV[1]
local ttl = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local found = 0
local keep = ttl * 2 + 60000
for p = 1, n do
  local R, Z, A = KEYS[4*p-2], KEYS[4*p-1], KEYS[4*p]
  local score = tonumber(redis.call('ZSCORE', Z, id))
  if score and score > now then
    redis.call('ZADD', Z, 'XX', now + ttl, id)
    redis.call('PEXPIRE', R, keep)
    redis.call('PEXPIRE', Z, keep)
    redis.call('PEXPIRE', A, keep)
    found = 1
  end
end
return {found}
