-- complete.lua: ARGV 1 node, 2 raw task. The task leaves the node's in-flight
-- list and gives back its capacity, run_count and slot token. Returns 1, or 0
-- (and changes nothing) when the task is no longer in flight there, so a
-- retried call never returns capacity twice.
local node, raw = ARGV[1], ARGV[2]
if redis.call('LREM', key_inflight(node), 1, raw) == 0 then
  return 0
end
release(node, raw)
redis.call('HDEL', ATTEMPTS, raw)
redis.call('HDEL', LAST_ERROR, raw)
return 1
