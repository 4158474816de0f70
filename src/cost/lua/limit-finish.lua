-- Provider limit finish: an admitted request ended, having used `tokens`
-- (../limit-store.ts, createRedisLimitStore.finish).
-- KEYS[1]: log (zset request id -> ms), KEYS[2]: amt (hash request id -> tokens),
--   KEYS[3]: sum (string, tokens in the window).
-- ARGV[1]: request id, ARGV[2]: tokens used, ARGV[3]: windowMs.
-- Reply: {0}.
--
-- The entry now counts `tokens` and stays in the window until now + windowMs (re-added if it
-- already left the window: a call that outlived the window still counts until its end).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = tonumber(ARGV[2])
local a = tonumber(redis.call('HGET', KEYS[2], ARGV[1])) or 0
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], v)
redis.call('INCRBY', KEYS[3], v - a)
local keep = tonumber(ARGV[3]) * 2 + 1000
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
redis.call('PEXPIRE', KEYS[3], keep)
return {0}
