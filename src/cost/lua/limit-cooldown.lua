-- Provider limit cool-down: make every acquire of a limit wait at least `ms` from now
-- (a provider 429; ../limit-store.ts, createRedisLimitStore.cooldown). Never shortens one.
-- KEYS[1]: cool (string with PX).
-- ARGV[1]: ms.
-- Reply: {0}.
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], '1', 'PX', ms)
end
return {0}
