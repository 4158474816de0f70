-- Budget reservation: admit `amount` tokens against every period given, all or nothing
-- (../budget-store.ts, createRedisBudgetStore.reserve).
-- KEYS, four per period p (1-based): KEYS[4p-3] U = hash {used, sync}, KEYS[4p-2] R = reserved sum
--   (string), KEYS[4p-1] Z = zset reservation id -> expiry ms, KEYS[4p] A = hash reservation id -> amount.
-- ARGV[1]: reservation id, ARGV[2]: amount, ARGV[3]: reservation TTL ms, ARGV[4]: resync ms,
--   ARGV[5]: n (periods); then three per period p: ARGV[5+3(p-1)+1] budget,
--   ARGV[5+3(p-1)+2] seed from Postgres ('' = none), ARGV[5+3(p-1)+3] used-counter TTL ms.
-- Reply: {0} admitted | {2, i...} these periods (0-based) need a seed | {1, i, used, reserved, budget}
--   refused by period i (0-based), the one with the least headroom.
--
-- First, per period: lapse expired reservations (at most LAPSE_BATCH; the rest go on the next
-- call), merge a seed with max() (never loses a settlement made since), and ask for a seed when
-- the used counter is missing or older than resync ms.
local LAPSE_BATCH = 256
local id = ARGV[1]
local amount = tonumber(ARGV[2])
local resTtl = tonumber(ARGV[3])
local resync = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local used, reserved, budgets, need = {}, {}, {}, {}
for p = 1, n do
  local U, R, Z, A = KEYS[4*p-3], KEYS[4*p-2], KEYS[4*p-1], KEYS[4*p]
  local base = 5 + 3 * (p - 1)
  budgets[p] = tonumber(ARGV[base + 1])
  local seed = ARGV[base + 2]
  local usedTtl = tonumber(ARGV[base + 3])
  local gone = redis.call('ZRANGEBYSCORE', Z, '-inf', now, 'LIMIT', 0, LAPSE_BATCH)
  for _, m in ipairs(gone) do
    local a = tonumber(redis.call('HGET', A, m))
    if a then redis.call('DECRBY', R, a) end
    redis.call('HDEL', A, m)
    redis.call('ZREM', Z, m)
  end
  local st = redis.call('HMGET', U, 'used', 'sync')
  local u = tonumber(st[1])
  local s = tonumber(st[2])
  if seed ~= '' then
    local sv = tonumber(seed)
    if u == nil or sv > u then u = sv end
    redis.call('HSET', U, 'used', u, 'sync', now)
    redis.call('PEXPIRE', U, usedTtl)
  elseif u == nil or s == nil or now - s >= resync then
    need[#need + 1] = p - 1
  end
  used[p] = u or 0
  local r = tonumber(redis.call('GET', R) or '0') or 0
  if r < 0 then
    r = 0
    redis.call('DEL', R)
  end
  reserved[p] = r
end
if #need > 0 then return {2, unpack(need)} end
local worst, head = 1, nil
for p = 1, n do
  local h = budgets[p] - used[p] - reserved[p]
  if head == nil or h < head then
    head = h
    worst = p
  end
end
if head < amount then
  return {1, worst - 1, used[worst], reserved[worst], budgets[worst]}
end
local keep = resTtl * 2 + 60000
for p = 1, n do
  local R, Z, A = KEYS[4*p-2], KEYS[4*p-1], KEYS[4*p]
  redis.call('INCRBY', R, amount)
  redis.call('HSET', A, id, amount)
  redis.call('ZADD', Z, now + resTtl, id)
  redis.call('PEXPIRE', R, keep)
  redis.call('PEXPIRE', Z, keep)
  redis.call('PEXPIRE', A, keep)
end
return {0}
