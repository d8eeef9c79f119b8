-- run_settle.lua: ARGV 1 a stopped run. Once its agents have published it,
-- the tasks that ran on past a forced stop are done too: its counters are
-- taken again, unless another run has started since (then the counters are
-- that run's). Returns 1 if taken, 0 if not.
local run = ARGV[1]
local info = key_run_info(run)
if redis.call('EXISTS', RUN_CURRENT) == 1 or not redis.call('HGET', info, 'stopped_ms') then
  return 0
end
keep_run_counters(info, outstanding())
return 1
