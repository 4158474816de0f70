-- Token bucket: one atomic take (the coordination rate limiter, ../rate-limiter.ts).
-- KEYS[1]: the bucket, a hash {tokens, ts} (ts = ms of the last take).
-- ARGV[1]: points (bucket size), ARGV[2]: durationMs (time to refill from empty), ARGV[3]: cost.
-- Reply: {allowed 0|1, remaining, resetMs, retryAfterMs}, all integers.
--
-- The mirror of `takeTokens` in src/coord/internal.ts (the in-memory backend): keep
-- the two in step. Time comes from the Redis server, so processes with skewed
-- clocks still share one bucket consistently. A full bucket is deleted rather
-- than stored; otherwise the key expires when it would be full again.
local points = tonumber(ARGV[1])
local duration = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local eps = 1e-6
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = points
local prevTokens = tonumber(st[1])
local prevTs = tonumber(st[2])
if prevTokens ~= nil and prevTs ~= nil then
  local elapsed = now - prevTs
  if elapsed < 0 then elapsed = 0 end
  tokens = math.min(points, prevTokens + (elapsed * points) / duration)
end
local allowed = 0
if cost <= tokens + eps then
  tokens = math.max(0, tokens - cost)
  allowed = 1
end
local resetMs = math.max(0, math.ceil(((points - tokens) * duration) / points - eps))
local retryAfterMs = 0
if allowed == 0 then
  retryAfterMs = math.max(1, math.ceil(((cost - tokens) * duration) / points - eps))
end
if resetMs > 0 then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
  redis.call('PEXPIRE', KEYS[1], resetMs)
else
  redis.call('DEL', KEYS[1])
end
return {allowed, math.max(0, math.floor(tokens + eps)), resetMs, retryAfterMs}
