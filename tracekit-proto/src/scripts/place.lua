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
-- common.lua): for each free capacity >= need, the head of its bucket in the
-- weigher's family is that capacity's best node, so a placement reads a few
-- bucket heads whatever the number of nodes. The family is built (from
-- every indexed node, once) if no placement used it before. Nodes whose
-- heartbeat is too old for this call's timeout leave the index first (their
-- next heartbeat puts them back). A bucket head is checked against the
-- node's counters before it is used: an entry that disagrees (written by
-- something other than these scripts) is re-filed and the search repeats.
-- Nodes with slot tokens (usually none) are read one by one, as the token
-- window is a list.
local weigher = ARGV[1]
local order_max = ARGV[2] == 'max'
local scan = num(ARGV[3])
local max_attempts = num(ARGV[4])
local timeout = num(ARGV[5])
local batch = num(ARGV[6])

local now = now_ms()
local since = now - timeout

-- Stale nodes leave the index: every indexed node is then alive for this call.
for _, node in ipairs(redis.call('ZRANGEBYSCORE', ALIVE, '-inf', since)) do
  if redis.call('ZSCORE', IDX_LIVE, node) then
    unindex_node(node)
  end
end

-- The weigher's family of buckets, built if no placement used it before.
local fam = 'first'
if weigher == 'instances' then
  fam = order_max and 'inst_max' or 'inst'
elseif weigher == 'vcpu' then
  fam = order_max and 'vcpu_max' or 'vcpu'
end
local family = FAMILY_KEY[fam]
if redis.call('SISMEMBER', IDX_FAMILIES, fam) == 0 then
  local nodes = redis.call('ZRANGE', IDX_LIVE, 0, -1)
  local chunk = 200
  for s = 1, #nodes, chunk do
    local keys = {}
    for i = s, math.min(s + chunk - 1, #nodes) do
      local node = nodes[i]
      keys[#keys + 1] = key_cap(node)
      keys[#keys + 1] = key_cap_total(node)
      keys[#keys + 1] = key_run_count(node)
      keys[#keys + 1] = key_parallel(node)
    end
    local v = redis.call('MGET', unpack(keys))
    for i = s, math.min(s + chunk - 1, #nodes) do
      local o = (i - s) * 4
      local cap, total, rc, par = num(v[o + 1]), num(v[o + 2]), num(v[o + 3]), num(v[o + 4])
      if par == 0 and cap >= 1 then
        redis.call('ZADD', family(cap), family_score(fam, total, rc), nodes[i])
        redis.call('ZADD', IDX_CAPS, cap, cap)
      end
    end
  end
  redis.call('SADD', IDX_FAMILIES, fam)
  active_families = nil
end

-- The oriented metric (smaller is better) of a node with free capacity c,
-- from its score in the family.
local function metric(score, c)
  if fam == 'vcpu' then
    return score - c
  elseif fam == 'vcpu_max' then
    return score + c
  end
  return score
end

-- Free capacities that may have a bucket (kept locally for this call).
local caps = {}
for _, c in ipairs(redis.call('ZRANGE', IDX_CAPS, 0, -1)) do
  c = tonumber(c)
  caps[c] = true
  caps_known[c] = true
end

-- Counters of nodes this call has already checked or changed, and the heads
-- of the weigher's buckets it has read ({ node, score }, false = empty):
-- nothing else writes while the script runs, so they stay true until this
-- call changes them.
local checked = {}
local heads = {}
local function head_of(c)
  local h = heads[c]
  if h == nil then
    local r = redis.call('ZRANGE', family(c), 0, 0, 'WITHSCORES')
    h = r[1] and { r[1], tonumber(r[2]) } or false
    heads[c] = h
  end
  return h
end
-- `node` joined bucket c with `score`: it may be the new head.
local function joined(c, node, score)
  local h = heads[c]
  if h == false or (h and (score < h[2] or (score == h[2] and name_less(node, h[1])))) then
    heads[c] = { node, score }
  end
end

-- Nodes with slot tokens: read once per call, kept up to date locally.
local slotted = {}
for _, node in ipairs(redis.call('SMEMBERS', SLOTTED)) do
  if redis.call('ZSCORE', IDX_LIVE, node) then
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

-- The best indexed node without slot tokens for `units`, checked against
-- its counters: { name, cap, total, rc, m } or nil.
local function best_indexed(units)
  while true do
    local best, best_m, best_c, best_s = nil, nil, nil, nil
    for c, _ in pairs(caps) do
      if c >= units then
        local h = head_of(c)
        if h then
          local m = metric(h[2], c)
          if better(m, h[1], best_m, best) then
            best, best_m, best_c, best_s = h[1], m, c, h[2]
          end
        else
          -- An emptied bucket: its capacity leaves IDX_CAPS.
          redis.call('ZREM', IDX_CAPS, c)
          caps[c] = nil
          caps_known[c] = nil
        end
      end
    end
    if best == nil then
      return nil
    end
    local k = checked[best]
    if not k then
      local v = redis.call('MGET', key_cap(best), key_cap_total(best), key_run_count(best), key_parallel(best))
      k = { cap = num(v[1]), total = num(v[2]), rc = num(v[3]), par = num(v[4]) }
    end
    if k.cap == best_c and k.par == 0 and family_score(fam, k.total, k.rc) == best_s then
      checked[best] = k
      return { name = best, cap = k.cap, total = k.total, rc = k.rc, m = best_m }
    end
    unbucket(best, best_c)
    unindex_node(best)
    index_node(best)
    heads[best_c] = nil
    heads[k.cap] = nil
    if k.cap >= 1 then
      caps[k.cap] = true
    end
  end
end

-- The largest cap_total among live (indexed) nodes, or nil when none is.
local function largest_live()
  local r = redis.call('ZREVRANGE', IDX_LIVE, 0, 0, 'WITHSCORES')
  return r[1] and tonumber(r[2])
end

-- The head tasks this call may consume; consumed ones are trimmed at the end.
local tasks = redis.call('LRANGE', PENDING, 0, batch - 1)
local consumed = 0

-- Placed tasks per node (in placement order) and the nodes' new counters,
-- written at the end of the call in one command per node queue and one MSET:
-- this call reads them from `checked` and `slotted`, and no other script
-- runs before it ends.
local queued, queued_order = {}, {}
local function enqueue(node, raw)
  local q = queued[node]
  if not q then
    q = {}
    queued[node] = q
    queued_order[#queued_order + 1] = node
  end
  q[#q + 1] = raw
end
local counters, counters_order = {}, {}
local function set_counters(node, cap, rc)
  if not counters[node] then
    counters_order[#counters_order + 1] = node
  end
  counters[node] = { cap, rc }
end

local out = { 'more' }
local placed_n = 0
local function dead(raw, reason)
  bury(raw, reason, nil)
  consumed = consumed + 1
  out[#out + 1] = 'dead'
  out[#out + 1] = quote(reason)
  if #raw > MAX_TASK_BYTES then
    raw = quote(raw)
  end
  out[#out + 1] = raw
end

while consumed < batch do
  local raw = tasks[consumed + 1]
  if not raw then
    out[1] = 'empty'
    break
  end
  local reason = too_large(raw)
  local units = nil
  if not reason then
    units, reason = task_units(raw)
  end
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
    dead(raw, reason)
  else
    local choice = best_indexed(units)
    local slot_choice = nil
    if #slotted > 0 then
      local tokens = token_counts()
      local best_m, best = nil, nil
      if choice then
        best_m, best = choice.m, choice.name
      end
      for i, s in ipairs(slotted) do
        if s.cap >= units and (tokens[s.name] or 0) > 0 then
          local m = 0
          if weigher == 'instances' then
            m = s.rc
          elseif weigher == 'vcpu' then
            m = s.total - s.cap
          end
          if order_max then
            m = -m
          end
          if better(m, s.name, best_m, best) then
            slot_choice, best_m, best = i, m, s.name
          end
        end
      end
    end
    if slot_choice then
      local s = slotted[slot_choice]
      enqueue(s.name, raw)
      s.cap = s.cap - units
      s.rc = s.rc + 1
      set_counters(s.name, s.cap, s.rc)
      redis.call('LREM', SLOTS, -1, s.name)
      consumed = consumed + 1
      placed_n = placed_n + 1
      out[#out + 1] = 'placed'
      out[#out + 1] = s.name
      out[#out + 1] = raw
    elseif choice then
      local node = choice.name
      local cap, rc = choice.cap - units, choice.rc + 1
      enqueue(node, raw)
      set_counters(node, cap, rc)
      unbucket(node, choice.cap)
      bucket(node, cap, choice.total, rc)
      heads[choice.cap] = nil
      if cap >= 1 then
        caps[cap] = true
        joined(cap, node, family_score(fam, choice.total, rc))
      end
      checked[node] = { cap = cap, total = choice.total, rc = rc, par = 0 }
      consumed = consumed + 1
      placed_n = placed_n + 1
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
        dead(raw, 'needs ' .. units .. ' cpu units, the largest live node has ' .. largest)
      else
        out[1] = 'wait'
        break
      end
    end
  end
end
for _, node in ipairs(queued_order) do
  local q = queued[node]
  for s = 1, #q, 1000 do
    redis.call('RPUSH', key_queue(node), unpack(q, s, math.min(s + 999, #q)))
  end
end
for s = 1, #counters_order, 500 do
  local args = {}
  for i = s, math.min(s + 499, #counters_order) do
    local node = counters_order[i]
    args[#args + 1] = key_cap(node)
    args[#args + 1] = counters[node][1]
    args[#args + 1] = key_run_count(node)
    args[#args + 1] = counters[node][2]
  end
  redis.call('MSET', unpack(args))
end
if consumed > 0 then
  redis.call('LTRIM', PENDING, consumed, -1)
end
gauge('placed', placed_n)
return out
