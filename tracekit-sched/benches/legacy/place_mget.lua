-- Frozen copy of common.lua + place.lua before the placement index (commit 714bfa2): the benchmark's 'before' column. Not used by Tracekit itself.
-- common.lua: helpers prepended to every Tracekit script (see the data model
-- in tracekit_proto's crate doc). Every script gets KEYS[1] = pending list,
-- KEYS[2] = slot-token list. Writes come after all reads and checks, so a
-- script error can never leave half a state transition behind.
local PENDING = KEYS[1]
local SLOTS = KEYS[2]
local REGISTRY = 'nodes:registry'
local ALIVE = 'nodes:alive'
local SLOTTED = 'nodes:slotted'
local DEAD = 'q:dead'
local ATTEMPTS = 'q:attempts'
local LAST_ERROR = 'q:last_error'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function num(v)
  return tonumber(v) or 0
end

-- cpu_units of a raw task: an integer >= 1 (absent or null = 1), or nil and
-- the reason the task can never be placed.
local function task_units(raw)
  local ok, t = pcall(cjson.decode, raw)
  if not ok or type(t) ~= 'table' then
    return nil, 'malformed task JSON'
  end
  local u = t['cpu_units']
  if u == nil or u == cjson.null then
    return 1
  end
  if type(u) ~= 'number' or u ~= math.floor(u) then
    return nil, 'cpu_units is not an integer'
  end
  if u < 1 then
    return nil, 'cpu_units < 1'
  end
  return u
end

-- Units a task holds once it sits on a node (what its completion returns).
local function held_units(raw)
  return task_units(raw) or 1
end

-- A dead-letter entry: the raw task (kept byte for byte), why, where, when.
local function dead_entry(raw, reason, node)
  local e = { task = raw, reason = reason, ts = now_ms() }
  if node then
    e.node = node
  end
  return cjson.encode(e)
end

-- Give back what a finished (or handed-back) task held on `node`: capacity
-- (never above the node's total), one run_count (never below 0) and one slot
-- token when the node uses slots.
local function release(node, raw)
  local units = held_units(raw)
  local total = redis.call('GET', 'cap_total:' .. node)
  local cap = num(redis.call('GET', 'cap:' .. node)) + units
  if total and cap > num(total) then
    cap = num(total)
  end
  local rc = num(redis.call('GET', 'run_count:' .. node))
  local par = num(redis.call('GET', 'parallel:' .. node))
  redis.call('SET', 'cap:' .. node, cap)
  if rc > 0 then
    redis.call('SET', 'run_count:' .. node, rc - 1)
  end
  if par > 0 then
    redis.call('RPUSH', SLOTS, node)
  end
end

-- Everything a node holds (in flight first, then queued, each in order),
-- removed from it, with its bookkeeping reset to "idle". In-flight tasks count
-- one failed attempt when `count_attempt`.
local function take_back(node, count_attempt)
  local inflight = redis.call('LRANGE', 'inflight:' .. node, 0, -1)
  local queued = redis.call('LRANGE', 'q:' .. node, 0, -1)
  local total = redis.call('GET', 'cap_total:' .. node)
  if count_attempt then
    for _, raw in ipairs(inflight) do
      redis.call('HINCRBY', ATTEMPTS, raw, 1)
    end
  end
  redis.call('DEL', 'inflight:' .. node, 'q:' .. node)
  if total then
    redis.call('SET', 'cap:' .. node, total)
  end
  redis.call('SET', 'run_count:' .. node, 0)
  redis.call('LREM', SLOTS, 0, node)
  local out = {}
  for _, raw in ipairs(inflight) do
    out[#out + 1] = raw
  end
  for _, raw in ipairs(queued) do
    out[#out + 1] = raw
  end
  return out
end

-- Put tasks back at the head of pending in their original order: by
-- ts_enqueue, then by the order given (tasks without one keep theirs, last).
local function push_head(tasks)
  local keyed = {}
  for i, raw in ipairs(tasks) do
    local ok, t = pcall(cjson.decode, raw)
    local ts = math.huge
    if ok and type(t) == 'table' and type(t['ts_enqueue']) == 'number' then
      ts = t['ts_enqueue']
    end
    keyed[i] = { ts, i, raw }
  end
  table.sort(keyed, function(a, b)
    if a[1] ~= b[1] then
      return a[1] < b[1]
    end
    return a[2] < b[2]
  end)
  for i = #keyed, 1, -1 do
    redis.call('LPUSH', PENDING, keyed[i][3])
  end
end

-- MGET in chunks (Lua's unpack has a stack limit).
local function mget(keys)
  local out = {}
  local chunk = 1000
  for s = 1, #keys, chunk do
    local part = {}
    for i = s, math.min(s + chunk - 1, #keys) do
      part[#part + 1] = keys[i]
    end
    local vals = redis.call('MGET', unpack(part))
    for _, v in ipairs(vals) do
      out[#out + 1] = v
    end
  end
  return out
end

-- Live nodes (heartbeat newer than `since` ms) in byte order of names: the
-- registry's order (all scores 0), filtered by the alive set. Names only, no
-- scores: two cheap range reads whatever the number of nodes.
local function live_nodes(since)
  local alive = {}
  local any = false
  for _, n in ipairs(redis.call('ZRANGEBYSCORE', ALIVE, '(' .. since, '+inf')) do
    alive[n] = true
    any = true
  end
  local live = {}
  if not any then
    return live
  end
  for _, n in ipairs(redis.call('ZRANGE', REGISTRY, 0, -1)) do
    if alive[n] then
      live[#live + 1] = n
    end
  end
  return live
end

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
