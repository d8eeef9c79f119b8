-- complete.lua: ARGV 1 node, 2 raw task. The task leaves the node's in-flight
-- list and gives back its capacity, run_count and slot token; it counts as
-- done, and its completion time joins the last minute's (the throughput).
-- Returns 1, or 0 (and changes nothing) when the task is no longer in flight
-- there, so a retried call never returns capacity twice.
local node, raw = ARGV[1], ARGV[2]
if redis.call('LREM', key_inflight(node), 1, raw) == 0 then
  return 0
end
release(node, raw)
redis.call('HDEL', ATTEMPTS, raw)
redis.call('HDEL', LAST_ERROR, raw)
local now = now_ms()
local done = redis.call('HINCRBY', STATS_RUN, 'done', 1)
redis.call('ZADD', DONE_TIMES, now, now .. ':' .. done)
redis.call('ZREMRANGEBYSCORE', DONE_TIMES, '-inf', now - 60000)
return 1
