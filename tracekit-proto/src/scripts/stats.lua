-- stats.lua: the run's counters and gauges in one consistent read. Returns
-- { now_ms, pending, dead letters listed, done in the last minute,
--   current run ('' = none), when it started (ms, 0 = none),
--   field1, value1, ... } with the fields of STATS_RUN and STATS_LIVE.
local now = now_ms()
local run = redis.call('GET', RUN_CURRENT) or ''
local out = {
  now,
  redis.call('LLEN', PENDING),
  redis.call('LLEN', DEAD),
  redis.call('ZCOUNT', DONE_TIMES, '(' .. (now - 60000), '+inf'),
  run,
  run ~= '' and num(redis.call('ZSCORE', RUNS, run)) or 0,
}
for _, key in ipairs({ STATS_RUN, STATS_LIVE }) do
  for _, v in ipairs(redis.call('HGETALL', key)) do
    out[#out + 1] = v
  end
end
return out
