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
      redis.call('HSET', LAST_ERROR, raw, 'its node was declared dead while running it')
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
