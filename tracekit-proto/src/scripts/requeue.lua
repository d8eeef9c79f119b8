-- requeue.lua: ARGV 1 node, 2 raw task, 3 count a failed attempt (1/0),
-- 4 why it failed ('' = not said), 5 the lease token it was taken under
-- ('' = not said: a registration that ended changes nothing).
-- The worker hands an in-flight task back:
-- it returns to the head of pending and its capacity is given back. The
-- reason of the last failed attempt is kept for the dead letter. Returns 1,
-- or 0 when it was not in flight there.
local node, raw = ARGV[1], ARGV[2]
if not holds(node, ARGV[5]) or redis.call('LREM', key_inflight(node), 1, raw) == 0 then
  return 0
end
release(node, raw)
if ARGV[3] == '1' then
  redis.call('HINCRBY', ATTEMPTS, raw, 1)
  stat('failed', 1)
  -- The last attempt's reason, or none: never an older attempt's.
  if ARGV[4] and ARGV[4] ~= '' then
    redis.call('HSET', LAST_ERROR, raw, quote(ARGV[4]))
  else
    redis.call('HDEL', LAST_ERROR, raw)
  end
end
redis.call('LPUSH', PENDING, raw)
return 1
