-- run_start.lua: ARGV 1 run id. Makes it the current run: agents that
-- follow the controller's runs record into it from their next heartbeat,
-- and the run's counters start from zero (the gauges describe tasks that
-- exist and are kept). Returns { 1 }, { 0, current } when a run is current
-- already, or { -1 } when the id was used before (a run's traces never mix
-- with another's).
local id = ARGV[1]
local current = redis.call('GET', RUN_CURRENT)
if current then
  return { 0, current }
end
if redis.call('EXISTS', key_run_info(id)) == 1 then
  return { -1 }
end
local now = now_ms()
redis.call('SET', RUN_CURRENT, id)
redis.call('ZADD', RUNS, now, id)
redis.call('HSET', key_run_info(id), 'started_ms', now)
redis.call('DEL', STATS_RUN, DONE_TIMES)
return { 1 }
