-- submit.lua: append tasks for one dispatcher, exactly once. KEYS[3] = the
-- dispatcher's high-water mark (highest index already pushed); ARGV: 1 target
-- ('' = pending, else a node for direct assignment), 2 mark TTL ms, then
-- pairs (index, raw). Indexes are strictly increasing per dispatcher, so a
-- call retried after a lost reply pushes nothing twice.
-- A direct assignment reserves what the node's worker will give back on
-- completion (capacity, run_count, a slot token if one is free).
-- Returns the number of tasks pushed.
local target = ARGV[1]
local mark = tonumber(redis.call('GET', KEYS[3]) or '-1')
local hi = mark
local pushed = 0
for i = 3, #ARGV, 2 do
  local idx, raw = tonumber(ARGV[i]), ARGV[i + 1]
  if idx > mark then
    if target == '' then
      redis.call('RPUSH', PENDING, raw)
    else
      redis.call('RPUSH', key_queue(target), raw)
      local v = redis.call('MGET', key_cap(target), key_cap_total(target), key_run_count(target), key_parallel(target))
      local cap, total, rc = num(v[1]), num(v[2]), num(v[3])
      redis.call('SET', key_cap(target), cap - held_units(raw))
      redis.call('SET', key_run_count(target), rc + 1)
      if num(v[4]) > 0 then
        redis.call('LREM', SLOTS, -1, target)
      else
        refile(target, cap, cap - held_units(raw), total, rc + 1)
      end
    end
    pushed = pushed + 1
    if idx > hi then
      hi = idx
    end
  end
end
redis.call('SET', KEYS[3], hi, 'PX', ARGV[2])
stat('submitted', pushed)
if target ~= '' then
  gauge('placed', pushed)
end
return pushed
