-- complete.lua: ARGV 1 node, 2 raw task, 3 the run's trace id ('' = not
-- said), 4 the lease token it was taken under ('' = not said). The task
-- leaves the node's in-flight list and gives back its capacity, run_count and
-- slot token: returns 1. Only the registration that took it may: a run of an
-- ended registration is judged as a late one. The answer for a trace id is
-- kept a day, so a completion sent again (a lost reply, a journal replayed)
-- gets the same answer.
-- A completion that comes after the task was taken back (its node was
-- declared dead) still counts while nobody has taken the task again: it
-- leaves pending, or the queue of the live node it was placed on (which gets
-- back what the task held there): returns 2. Otherwise returns 0 and changes
-- nothing, so a retried call never returns capacity twice, and a run that
-- another node has started again is not completed under it. A completion
-- that counts is done, and its time joins the last minute's (throughput).
local node, raw, run, lease = ARGV[1], ARGV[2], ARGV[3] or '', ARGV[4] or ''
if run ~= '' then
  local prev = redis.call('GET', key_completed(run))
  if prev then
    return tonumber(prev)
  end
end
local function done(answer)
  if run ~= '' then
    redis.call('SET', key_completed(run), answer, 'PX', 86400000)
  end
  redis.call('HDEL', ATTEMPTS, raw)
  redis.call('HDEL', LAST_ERROR, raw)
  local now = now_ms()
  local n = redis.call('HINCRBY', STATS_RUN, 'done', 1)
  redis.call('ZADD', DONE_TIMES, now, now .. ':' .. n)
  redis.call('ZREMRANGEBYSCORE', DONE_TIMES, '-inf', now - 60000)
end
if holds(node, lease) and redis.call('LREM', key_inflight(node), 1, raw) == 1 then
  release(node, raw)
  done(1)
  return 1
end
if redis.call('LREM', PENDING, 1, raw) == 1 then
  done(2)
  return 2
end
-- Placed again but not taken: the node's queue holds it (rare, so a walk of
-- the live nodes is affordable).
for _, other in ipairs(redis.call('ZRANGE', ALIVE, 0, -1)) do
  if redis.call('LPOS', key_queue(other), raw) then
    redis.call('LREM', key_queue(other), 1, raw)
    release(other, raw)
    -- It was placed there, not running.
    gauge('running', 1)
    gauge('placed', -1)
    done(2)
    return 2
  end
end
return 0
