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
local live = live_nodes(now - timeout)
local n = #live

-- Read only what the decision needs: free capacity always; run_count and
-- totals only for the weigher that uses them (totals also when the head fits
-- nowhere, to tell "wait" from "can never run"). Keeps the per-node cost of
-- a call at one MGET key for the first-fit case.
local function per_node(prefix)
  local keys = {}
  for i, node in ipairs(live) do
    keys[i] = prefix .. node
  end
  local vals = mget(keys)
  local out = {}
  for i = 1, n do
    out[i] = num(vals[i])
  end
  return out
end
local cap = per_node('cap:')
local rc = nil
local total = nil
if weigher == 'instances' then
  rc = per_node('run_count:')
elseif weigher == 'vcpu' then
  total = per_node('cap_total:')
end
local function max_total()
  if not total then
    total = per_node('cap_total:')
  end
  local m = 0
  for i = 1, n do
    if total[i] > m then
      m = total[i]
    end
  end
  return m
end
-- Nodes that use slot tokens (usually none).
local slotted = {}
local any_slots = false
if n > 0 then
  for _, node in ipairs(redis.call('SMEMBERS', SLOTTED)) do
    slotted[node] = true
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
      local last = redis.call('HGET', LAST_ERROR, raw)
      if last then
        reason = reason .. ': ' .. last
      end
    end
  end
  if reason then
    redis.call('RPUSH', DEAD, dead_entry(raw, reason, nil))
    redis.call('LPOP', PENDING)
    redis.call('HDEL', ATTEMPTS, raw)
    redis.call('HDEL', LAST_ERROR, raw)
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
      if cap[i] >= units and (not slotted[live[i]] or (tokens[live[i]] or 0) > 0) then
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
      local largest = max_total()
      if units > largest then
        -- Fits no live node even when idle: it can never run.
        reason = 'needs ' .. units .. ' cpu units, the largest live node has ' .. largest
        redis.call('RPUSH', DEAD, dead_entry(raw, reason, nil))
        redis.call('LPOP', PENDING)
        redis.call('HDEL', ATTEMPTS, raw)
        redis.call('HDEL', LAST_ERROR, raw)
        out[#out + 1] = 'dead'
        out[#out + 1] = reason
        out[#out + 1] = raw
      else
        out[1] = 'wait'
        break
      end
    else
      local node = live[best]
      local runs = rc and rc[best] or num(redis.call('GET', 'run_count:' .. node))
      redis.call('RPUSH', 'q:' .. node, raw)
      redis.call('LPOP', PENDING)
      cap[best] = cap[best] - units
      redis.call('SET', 'cap:' .. node, cap[best])
      redis.call('SET', 'run_count:' .. node, runs + 1)
      if rc then
        rc[best] = runs + 1
      end
      if slotted[node] then
        redis.call('LREM', SLOTS, -1, node)
      end
      out[#out + 1] = 'placed'
      out[#out + 1] = node
      out[#out + 1] = raw
    end
  end
  done = done + 1
end
return out
