-- Provider limit admission: admit one request under a sliding window of requests and tokens,
-- or say how long to wait (../limit-store.ts, createRedisLimitStore.acquire).
-- KEYS[1]: log (zset request id -> ms), KEYS[2]: amt (hash request id -> tokens),
--   KEYS[3]: sum (string, tokens in the window), KEYS[4]: cool (string with PX, the cool-down).
-- ARGV[1]: request id, ARGV[2]: tokens, ARGV[3]: rpm (0 = none), ARGV[4]: tpm (0 = none),
--   ARGV[5]: windowMs, ARGV[6]: walk limit (most entries walked to compute a tpm wait;
--   WALK_LIMIT of ../limit-store.ts, which the memory store uses too).
-- Reply: {1, 0} admitted | {0, waitMs, reason}, reason 1 = rpm, 2 = tpm, 3 = cooldown.
--
-- Entries older than the window are dropped first, at most DROP_BATCH per call (the rest
-- on the next). A request larger than tpm is admitted alone, into an empty window.
local DROP_BATCH = 1000
local id = ARGV[1]
local tokens = tonumber(ARGV[2])
local rpm = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local walk = tonumber(ARGV[6])
local cool = redis.call('PTTL', KEYS[4])
if cool > 0 then return {0, cool, 3} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - window, 'LIMIT', 0, DROP_BATCH)
for _, m in ipairs(old) do
  local a = tonumber(redis.call('HGET', KEYS[2], m))
  if a then redis.call('DECRBY', KEYS[3], a) end
  redis.call('HDEL', KEYS[2], m)
  redis.call('ZREM', KEYS[1], m)
end
local count = redis.call('ZCARD', KEYS[1])
local sum = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
if sum < 0 then sum = 0 end
local wait, reason = 0, 0
if rpm > 0 and count + 1 > rpm then
  local e = redis.call('ZRANGE', KEYS[1], count - rpm, count - rpm, 'WITHSCORES')
  if e[2] then wait = tonumber(e[2]) + window - now else wait = window end
  reason = 1
end
if tpm > 0 and sum > 0 and sum + math.min(tokens, tpm) > tpm then
  local need = sum + math.min(tokens, tpm) - tpm
  local freed, w = 0, window
  local es = redis.call('ZRANGE', KEYS[1], 0, walk - 1, 'WITHSCORES')
  for i = 1, #es, 2 do
    freed = freed + (tonumber(redis.call('HGET', KEYS[2], es[i])) or 0)
    if freed >= need then
      w = tonumber(es[i + 1]) + window - now
      break
    end
  end
  if w > wait then
    wait = w
    reason = 2
  end
end
if reason > 0 then
  if wait < 1 then wait = 1 end
  return {0, wait, reason}
end
redis.call('ZADD', KEYS[1], now, id)
redis.call('HSET', KEYS[2], id, tokens)
redis.call('INCRBY', KEYS[3], tokens)
local keep = window * 2 + 1000
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
redis.call('PEXPIRE', KEYS[3], keep)
return {1, 0}
