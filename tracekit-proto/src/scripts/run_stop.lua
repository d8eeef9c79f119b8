-- run_stop.lua: ARGV 1 the run to stop ('' = the current one), 2 force
-- ('1' stops it with tasks outstanding: they stay queued and run in the
-- next run). Ends the current run: agents that follow it finish what they
-- run, then publish its traces. Returns
--   { 0 }                                         no run is current
--   { -1, current }                               ARGV 1 is not the current run
--   { -2, current, pending, placed, running }     tasks outstanding, no force
--   { 1, run, pending, placed, running, node… }   stopped; the live nodes
--                                                 that record into it
local wanted, force = ARGV[1], ARGV[2] == '1'
local current = redis.call('GET', RUN_CURRENT)
if not current then
  return { 0 }
end
if wanted ~= '' and wanted ~= current then
  return { -1, current }
end
local pending, placed, running = outstanding()
if not force and pending + placed + running > 0 then
  return { -2, current, pending, placed, running }
end
local info = key_run_info(current)
redis.call('DEL', RUN_CURRENT)
redis.call('HSET', info, 'stopped_ms', now_ms())
keep_run_counters(info, pending, placed, running)
local out = { 1, current, pending, placed, running }
local waiting = key_run_waiting(current)
redis.call('DEL', waiting)
local following = redis.call('HGETALL', NODE_RUN)
for i = 1, #following, 2 do
  local node, run = following[i], following[i + 1]
  if run == current and redis.call('ZSCORE', ALIVE, node) then
    out[#out + 1] = node
    redis.call('SADD', waiting, node)
  end
end
return out
