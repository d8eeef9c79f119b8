-- common.lua: helpers prepended to every Tracekit script (see the data model
-- in tracekit_proto's crate doc), after the key prelude generated from
-- keys.rs (REGISTRY, ALIVE, …, key_cap(node), …). Every script gets KEYS[1] =
-- pending list, KEYS[2] = slot-token list. Writes come after all reads and
-- checks, so a script error can never leave half a state transition behind.
local PENDING = KEYS[1]
local SLOTS = KEYS[2]

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

-- `s` as a message may quote it: whole up to QUOTE_BYTES, else its head cut
-- at a UTF-8 character boundary and its length.
local function quote(s)
  if #s <= QUOTE_BYTES then
    return s
  end
  local cut = QUOTE_BYTES - 40
  while cut > 0 and string.byte(s, cut + 1) >= 0x80 and string.byte(s, cut + 1) < 0xC0 do
    cut = cut - 1
  end
  return string.sub(s, 1, cut) .. '… (' .. #s .. ' bytes in all)'
end

-- Whether the registration of lease `token` holds `node`.
local function lease_is(node, token)
  return redis.call('HGET', key_lease(node), 'token') == token
end

-- Like lease_is, but a report that does not say its token ('' = an older
-- worker, or a test) is taken as the holder's.
local function holds(node, token)
  return token == nil or token == '' or lease_is(node, token)
end

-- Why a task can never be placed, judged on its size alone (nil = fine).
local function too_large(raw)
  if #raw > MAX_TASK_BYTES then
    return 'task is ' .. #raw .. ' bytes, more than the limit of ' .. MAX_TASK_BYTES
  end
  return nil
end

-- The run's counters (STATS_RUN: submitted, done, failed, dead) and the
-- gauges (STATS_LIVE: placed, running), kept by the transitions themselves.
local function stat(field, n)
  if n ~= 0 then
    redis.call('HINCRBY', STATS_RUN, field, n)
  end
end

local function gauge(field, n)
  if n ~= 0 then
    redis.call('HINCRBY', STATS_LIVE, field, n)
  end
end

-- Tasks not finished: pending, placed on node queues, running.
local function outstanding()
  return redis.call('LLEN', PENDING),
    math.max(num(redis.call('HGET', STATS_LIVE, 'placed')), 0),
    math.max(num(redis.call('HGET', STATS_LIVE, 'running')), 0)
end

-- Keep the run's counters (STATS_RUN) and what is outstanding in its hash.
local function keep_run_counters(info, pending, placed, running)
  redis.call('HSET', info, 'pending', pending, 'placed', placed, 'running', running)
  local counters = redis.call('HGETALL', STATS_RUN)
  if #counters > 0 then
    redis.call('HSET', info, unpack(counters))
  end
end

-- Dead-letter a task: an entry with the raw task (kept byte for byte unless
-- it is above the size limit: then its head, quoted), why (quoted), where,
-- when and its failed attempts goes to DEAD; its attempt count and last
-- error go.
local function bury(raw, reason, node)
  local task = raw
  if #raw > MAX_TASK_BYTES then
    task = quote(raw)
  end
  local e = {
    task = task,
    truncated = #raw > MAX_TASK_BYTES or nil,
    reason = quote(reason),
    ts = now_ms(),
    attempts = tonumber(redis.call('HGET', ATTEMPTS, raw) or '0'),
  }
  if node then
    e.node = node
  end
  redis.call('RPUSH', DEAD, cjson.encode(e))
  redis.call('HDEL', ATTEMPTS, raw)
  redis.call('HDEL', LAST_ERROR, raw)
  stat('dead', 1)
end

-- The placement index (see the data model): IDX_LIVE holds the nodes
-- placement may consider, scored by cap_total; an indexed node without slot
-- tokens and with free capacity c >= 1 is also in bucket c of every active
-- family (key_index_first/instances/vcpu(_max)(c), see family_score), and c
-- is in IDX_CAPS. Every script that changes a node's free
-- capacity, run_count or liveness keeps this up to date, so a placement reads
-- a few bucket heads instead of every node.
local FAMILY_KEY = {
  first = key_index_first,
  inst = key_index_instances,
  inst_max = key_index_instances_max,
  vcpu = key_index_vcpu,
  vcpu_max = key_index_vcpu_max,
}

local active_families = nil
-- The families kept up to date (read once per script call).
local function families()
  if not active_families then
    active_families = {}
    for _, f in ipairs(redis.call('SMEMBERS', IDX_FAMILIES)) do
      if FAMILY_KEY[f] then
        active_families[#active_families + 1] = f
      end
    end
  end
  return active_families
end

-- A node's score in family `f`: ascending scores, then names, are the
-- weigher's order (max orders negate the metric).
local function family_score(f, total, rc)
  if f == 'inst' then
    return rc
  elseif f == 'inst_max' then
    return -rc
  elseif f == 'vcpu' then
    return total
  elseif f == 'vcpu_max' then
    return -total
  end
  return 0
end

-- Capacities this call knows to be in IDX_CAPS (saves re-adding them).
local caps_known = {}

-- Take `node` out of the buckets of free capacity `cap`. An emptied bucket's
-- capacity stays in IDX_CAPS until a placement meets it.
local function unbucket(node, cap)
  if cap >= 1 then
    for _, f in ipairs(families()) do
      redis.call('ZREM', FAMILY_KEY[f](cap), node)
    end
  end
end

-- Put `node` in the buckets of free capacity `cap`.
local function bucket(node, cap, total, rc)
  if cap >= 1 then
    local fams = families()
    for _, f in ipairs(fams) do
      redis.call('ZADD', FAMILY_KEY[f](cap), family_score(f, total, rc), node)
    end
    if #fams > 0 and not caps_known[cap] then
      redis.call('ZADD', IDX_CAPS, cap, cap)
      caps_known[cap] = true
    end
  end
end

-- A node without slot tokens changed from free capacity `old_cap` to `cap`
-- (and to `rc` running): move it between buckets if it is indexed.
local function refile(node, old_cap, cap, total, rc)
  if redis.call('ZSCORE', IDX_LIVE, node) then
    unbucket(node, old_cap)
    bucket(node, cap, total, rc)
  end
end

-- (Re-)index `node` from its counters (it is alive).
local function index_node(node)
  local v = redis.call('MGET', key_cap(node), key_cap_total(node), key_run_count(node), key_parallel(node))
  local cap, total, rc, par = num(v[1]), num(v[2]), num(v[3]), num(v[4])
  redis.call('ZADD', IDX_LIVE, total, node)
  if par == 0 then
    bucket(node, cap, total, rc)
  end
end

-- Take `node` out of the index (dead, deregistered, or stale).
local function unindex_node(node)
  redis.call('ZREM', IDX_LIVE, node)
  unbucket(node, num(redis.call('GET', key_cap(node))))
end

-- Give back what a finished (or handed-back) task held on `node`: capacity
-- (never above the node's total), one run_count (never below 0) and one slot
-- token when the node uses slots.
local function release(node, raw)
  redis.call('HDEL', key_taken_at(node), raw)
  gauge('running', -1)
  local units = held_units(raw)
  local v = redis.call('MGET', key_cap(node), key_cap_total(node), key_run_count(node), key_parallel(node))
  local old_cap, total, rc, par = num(v[1]), v[2], num(v[3]), num(v[4])
  local cap = old_cap + units
  if total and cap > num(total) then
    cap = num(total)
  end
  redis.call('SET', key_cap(node), cap)
  local new_rc = rc
  if rc > 0 then
    new_rc = rc - 1
    redis.call('SET', key_run_count(node), new_rc)
  end
  if par > 0 then
    redis.call('RPUSH', SLOTS, node)
  else
    refile(node, old_cap, cap, num(total), new_rc)
  end
end

-- Everything a node holds (in flight first, then queued, each in order),
-- removed from it, with its bookkeeping reset to "idle". In-flight tasks count
-- one failed attempt when `count_attempt`.
local function take_back(node, count_attempt)
  local inflight = redis.call('LRANGE', key_inflight(node), 0, -1)
  local queued = redis.call('LRANGE', key_queue(node), 0, -1)
  local total = redis.call('GET', key_cap_total(node))
  if count_attempt then
    for _, raw in ipairs(inflight) do
      redis.call('HINCRBY', ATTEMPTS, raw, 1)
      redis.call('HSET', LAST_ERROR, raw, 'its node was declared dead while running it')
    end
    stat('failed', #inflight)
  end
  gauge('running', -#inflight)
  gauge('placed', -#queued)
  unindex_node(node)
  redis.call('DEL', key_inflight(node), key_queue(node), key_taken_at(node))
  if total then
    redis.call('SET', key_cap(node), total)
  end
  redis.call('SET', key_run_count(node), 0)
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

-- Whether `a` sorts before `b` in byte order (Lua's `<` on strings follows
-- the server's locale). Four bytes at a time: a byte past the end of the
-- shorter name (nil) sorts first.
local function name_less(a, b)
  if a == b then
    return false
  end
  local byte = string.byte
  local n = math.min(#a, #b)
  for i = 1, n, 4 do
    local a1, a2, a3, a4 = byte(a, i, i + 3)
    local b1, b2, b3, b4 = byte(b, i, i + 3)
    if a1 ~= b1 then
      return a1 < b1
    elseif a2 ~= b2 then
      return (a2 or -1) < (b2 or -1)
    elseif a3 ~= b3 then
      return (a3 or -1) < (b3 or -1)
    elseif a4 ~= b4 then
      return (a4 or -1) < (b4 or -1)
    end
  end
  return #a < #b
end

-- A number as a command argument: integers as digits ('%d' costs less than
-- the float formatting Redis applies to Lua numbers), anything else as is.
local function int_arg(x)
  if x == math.floor(x) and x > -2 ^ 53 and x < 2 ^ 53 then
    return string.format('%d', x)
  end
  return x
end
