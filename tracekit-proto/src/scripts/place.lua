-- place.lua: place up to ARGV[6] tasks from the head of pending, strictly in
-- FIFO order, each one all-or-nothing (the whole call is atomic).
-- ARGV: 1 weigher ('' | 'instances' | 'vcpu'), 2 order ('min' | 'max'),
--       3 scan_slots (0 = all tokens), 4 max_attempts (0 = no limit),
--       5 heartbeat timeout ms, 6 batch (max placements in this call)
-- Returns { status, kind1, a1, raw1, kind2, ... } where status is 'empty'
-- (pending is empty), 'wait' (head fits no live node now), 'nolive' (no live
-- node), or 'more' (batch used up); kind is 'placed' (a = node) or 'dead'
-- (a = reason). The policy is the pure model's (place_model.rs, beside this
-- file): filters live, free capacity, slot token; weigher metric, negated for
-- 'max'; ties to the first name in byte order.
--
-- Nodes without slot tokens are found through the placement index (see
-- common.lua): for each distinct free capacity >= need, the head of its
-- bucket in the weigher's order is that capacity's best node, so a
-- placement reads a few bucket heads whatever the number of nodes. Nodes
-- with slot tokens (usually none) are read one by one, as the token window
-- is a list. A bucket head is checked against the node's heartbeat and
-- counters before it is used: a stale node leaves the index (its next
-- heartbeat puts it back), an entry that disagrees with the counters (written
-- by something other than these scripts) is re-filed, and the search repeats.
local weigher = ARGV[1]
local order_max = ARGV[2] == 'max'
local scan = num(ARGV[3])
local max_attempts = num(ARGV[4])
local timeout = num(ARGV[5])
local batch = num(ARGV[6])

local now = now_ms()
local since = now - timeout

local function alive(node)
  local hb = redis.call('ZSCORE', ALIVE, node)
  return hb ~= false and hb ~= nil and tonumber(hb) > since
end

-- The bucket family of the weigher and the metric of a bucket entry (its
-- score in the family, in a bucket of free capacity c).
local family = key_index_first
if weigher == 'instances' then
  family = key_index_instances
elseif weigher == 'vcpu' then
  family = key_index_vcpu
end
local function metric(score, c, total, rc)
  if weigher == 'instances' then
    return rc
  elseif weigher == 'vcpu' then
    return total - c
  end
  return 0
end
-- What the entry's score must be for the node's counters.
local function want_score(total, rc)
  if weigher == 'instances' then
    return rc
  elseif weigher == 'vcpu' then
    return total
  end
  return 0
end

-- Nodes with slot tokens: read once per call, kept up to date locally.
local slotted = {}
for _, node in ipairs(redis.call('SMEMBERS', SLOTTED)) do
  if alive(node) and redis.call('ZSCORE', IDX_LIVE, node) then
    local v = redis.call('MGET', key_cap(node), key_cap_total(node), key_run_count(node))
    slotted[#slotted + 1] = { name = node, cap = num(v[1]), total = num(v[2]), rc = num(v[3]) }
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

-- Whether (m, name) ranks before (best_m, best): smaller metric, then name.
local function better(m, name, best_m, best)
  return best == nil or m < best_m or (m == best_m and name_less(name, best))
end

-- The head of bucket `key` in the weigher's order (ties by name): node, score.
local function bucket_head(key)
  if order_max and weigher ~= '' then
    local top = redis.call('ZREVRANGE', key, 0, 0, 'WITHSCORES')
    if not top[1] then
      return nil
    end
    local first = redis.call('ZRANGEBYSCORE', key, top[2], top[2], 'LIMIT', 0, 1)
    return first[1], tonumber(top[2])
  end
  local r = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return r[1], tonumber(r[2])
end

-- The best indexed node without slot tokens for `units`, checked against
-- its heartbeat and counters: { name, cap, total, rc, m } or nil.
local function best_indexed(units)
  while true do
    local best, best_m, best_c, best_s = nil, nil, nil, nil
    for _, cs in ipairs(redis.call('ZRANGEBYSCORE', IDX_CAPS, units, '+inf')) do
      local c = tonumber(cs)
      local node, score = bucket_head(family(c))
      if node then
        -- total and rc as the entry claims them; checked below.
        local m = metric(score, c, score, score)
        if order_max then
          m = -m
        end
        if better(m, node, best_m, best) then
          best, best_m, best_c, best_s = node, m, c, score
        end
      end
    end
    if best == nil then
      return nil
    end
    local v = redis.call('MGET', key_cap(best), key_cap_total(best), key_run_count(best), key_parallel(best))
    local cap, total, rc, par = num(v[1]), num(v[2]), num(v[3]), num(v[4])
    if not alive(best) then
      unbucket(best, best_c)
      unindex_node(best)
    elseif cap ~= best_c or par > 0 or want_score(total, rc) ~= best_s then
      unbucket(best, best_c)
      unindex_node(best)
      index_node(best)
    else
      return { name = best, cap = cap, total = total, rc = rc, m = best_m }
    end
  end
end

-- The largest cap_total among live nodes, or nil when none is live (stale
-- nodes met on the way leave the index).
local function largest_live()
  while true do
    local r = redis.call('ZREVRANGE', IDX_LIVE, 0, 0, 'WITHSCORES')
    if not r[1] then
      return nil
    end
    if alive(r[1]) then
      return tonumber(r[2])
    end
    unindex_node(r[1])
  end
end

local function dead(raw, reason, out)
  redis.call('RPUSH', DEAD, dead_entry(raw, reason, nil))
  redis.call('LPOP', PENDING)
  redis.call('HDEL', ATTEMPTS, raw)
  redis.call('HDEL', LAST_ERROR, raw)
  out[#out + 1] = 'dead'
  out[#out + 1] = reason
  out[#out + 1] = raw
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
    dead(raw, reason, out)
  else
    local choice = best_indexed(units)
    local slot_choice = nil
    if #slotted > 0 then
      local tokens = token_counts()
      for i, s in ipairs(slotted) do
        if s.cap >= units and (tokens[s.name] or 0) > 0 then
          local m = metric(0, s.cap, s.total, s.rc)
          if order_max then
            m = -m
          end
          local best_m = choice and choice.m
          local best = choice and choice.name
          if slot_choice then
            best_m, best = slot_choice.m, slotted[slot_choice.i].name
          end
          if better(m, s.name, best_m, best) then
            slot_choice = { i = i, m = m }
          end
        end
      end
    end
    if slot_choice then
      local s = slotted[slot_choice.i]
      redis.call('RPUSH', key_queue(s.name), raw)
      redis.call('LPOP', PENDING)
      s.cap = s.cap - units
      s.rc = s.rc + 1
      redis.call('SET', key_cap(s.name), s.cap)
      redis.call('SET', key_run_count(s.name), s.rc)
      redis.call('LREM', SLOTS, -1, s.name)
      out[#out + 1] = 'placed'
      out[#out + 1] = s.name
      out[#out + 1] = raw
    elseif choice then
      local node = choice.name
      local cap, rc = choice.cap - units, choice.rc + 1
      redis.call('RPUSH', key_queue(node), raw)
      redis.call('LPOP', PENDING)
      redis.call('SET', key_cap(node), cap)
      redis.call('SET', key_run_count(node), rc)
      unbucket(node, choice.cap)
      bucket(node, cap, choice.total, rc)
      out[#out + 1] = 'placed'
      out[#out + 1] = node
      out[#out + 1] = raw
    else
      local largest = largest_live()
      if largest == nil then
        out[1] = 'nolive'
        break
      elseif units > largest then
        -- Fits no live node even when idle: it can never run.
        dead(raw, 'needs ' .. units .. ' cpu units, the largest live node has ' .. largest, out)
      else
        out[1] = 'wait'
        break
      end
    end
  end
  done = done + 1
end
return out
