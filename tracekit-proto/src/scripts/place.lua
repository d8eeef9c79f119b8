-- place.lua: place up to ARGV[6] tasks from the head of pending, strictly in
-- FIFO order, each one all-or-nothing (the whole call is atomic).
-- ARGV: 1 weigher ('' | 'instances' | 'vcpu'), 2 order ('min' | 'max'),
--       3 scan_slots (0 = all tokens), 4 max_attempts (0 = no limit),
--       5 heartbeat timeout ms, 6 batch (max placements in this call)
-- Returns { status, kind1, a1, raw1, kind2, ... } where status is 'empty'
-- (pending is empty), 'wait' (head fits no live node now), 'nolive' (no live
-- node), or 'more' (batch used up); kind is 'placed' (a = node) or 'dead'
-- (a = reason). Mirrors tracekit-sched's placement.rs (filters + weighers).
local weigher = ARGV[1]
local order_max = ARGV[2] == 'max'
local scan = num(ARGV[3])
local max_attempts = num(ARGV[4])
local timeout = num(ARGV[5])
local batch = num(ARGV[6])

local now = now_ms()
local names, beats = registry_with_heartbeats()
local live = {}
for i, name in ipairs(names) do
  if beats[i] and beats[i] > now - timeout then
    live[#live + 1] = name
  end
end
local n = #live
local keys = {}
for i, node in ipairs(live) do
  keys[4 * i - 3] = 'cap:' .. node
  keys[4 * i - 2] = 'cap_total:' .. node
  keys[4 * i - 1] = 'run_count:' .. node
  keys[4 * i] = 'parallel:' .. node
end
local vals = mget(keys)
local cap, total, rc, par = {}, {}, {}, {}
local max_total = 0
local any_slots = false
for i = 1, n do
  cap[i] = num(vals[4 * i - 3])
  total[i] = num(vals[4 * i - 2])
  rc[i] = num(vals[4 * i - 1])
  par[i] = num(vals[4 * i])
  if total[i] > max_total then
    max_total = total[i]
  end
  if par[i] > 0 then
    any_slots = true
  end
end
local have_attempts = max_attempts > 0 and redis.call('EXISTS', ATTEMPTS) == 1

-- Slot tokens among the newest `scan` entries (the tail of the list), by node.
local function token_counts()
  local list
  if scan > 0 then
    list = redis.call('LRANGE', SLOTS, -scan, -1)
  else
    list = redis.call('LRANGE', SLOTS, 0, -1)
  end
  local counts = {}
  for _, t in ipairs(list) do
    counts[t] = (counts[t] or 0) + 1
  end
  return counts
end

local out = { 'more' }
local done = 0
while done < batch do
  local raw = redis.call('LINDEX', PENDING, 0)
  if not raw then
    out[1] = 'empty'
    break
  end
  local units, reason = task_units(raw)
  if units and have_attempts then
    local a = num(redis.call('HGET', ATTEMPTS, raw))
    if a >= max_attempts then
      reason = 'failed ' .. a .. ' attempts (max ' .. max_attempts .. ')'
    end
  end
  if units and not reason and n > 0 and units > max_total then
    reason = 'needs ' .. units .. ' cpu units, the largest live node has ' .. max_total
  end
  if reason then
    redis.call('RPUSH', DEAD, dead_entry(raw, reason, nil))
    redis.call('LPOP', PENDING)
    redis.call('HDEL', ATTEMPTS, raw)
    out[#out + 1] = 'dead'
    out[#out + 1] = reason
    out[#out + 1] = raw
  elseif n == 0 then
    out[1] = 'nolive'
    break
  else
    local tokens = nil
    if any_slots then
      tokens = token_counts()
    end
    -- Filters: live (above), free capacity, a slot token when the node uses
    -- slots. Weigher: metric, negated for 'max'; ties keep the first node in
    -- byte order of names (the registry's order) because only a strictly
    -- better metric replaces the choice.
    local best, best_m = nil, nil
    for i = 1, n do
      if cap[i] >= units and (par[i] == 0 or (tokens[live[i]] or 0) > 0) then
        local m = 0
        if weigher == 'instances' then
          m = rc[i]
        elseif weigher == 'vcpu' then
          m = total[i] - cap[i]
        end
        if order_max then
          m = -m
        end
        if best == nil or m < best_m then
          best, best_m = i, m
        end
      end
    end
    if best == nil then
      out[1] = 'wait'
      break
    end
    local node = live[best]
    redis.call('RPUSH', 'q:' .. node, raw)
    redis.call('LPOP', PENDING)
    cap[best] = cap[best] - units
    rc[best] = rc[best] + 1
    redis.call('SET', 'cap:' .. node, cap[best])
    redis.call('SET', 'run_count:' .. node, rc[best])
    if par[best] > 0 then
      redis.call('LREM', SLOTS, -1, node)
    end
    out[#out + 1] = 'placed'
    out[#out + 1] = node
    out[#out + 1] = raw
  end
  done = done + 1
end
return out
