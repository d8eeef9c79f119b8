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
-- common.lua): for each free capacity >= need, the best entry of its bucket
-- in the weigher's family is that capacity's best node, so a placement
-- compares a few bucket heads whatever the number of nodes. The family is
-- built (from every indexed node, once) if no placement used it before.
-- Nodes whose heartbeat is too old for this call's timeout leave the index
-- first (their next heartbeat puts them back).
--
-- Within a call the index in Redis is only read: a bucket's entries are read
-- in pages (growing, so a call that places many tasks from one bucket reads
-- it in a few commands); when one of a page's entries is chosen, the page is
-- checked against its nodes' counters in one MGET (an entry that disagrees,
-- written by something other than these scripts, is re-filed at once and
-- the search starts over). The nodes this call places are kept aside: their
-- Redis entries are skipped and they join a local list at their new free
-- capacity. The queues, counters and index entries of the placed nodes are
-- written once, at the end, in a few commands per bucket and node queue.
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
local active = false
for _, f in ipairs(families()) do
  active = active or f == fam
end
if not active then
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

-- Whether (m, name) ranks before (best_m, best): smaller metric (or score
-- within a bucket), then name.
local function better(m, name, best_m, best)
  return best == nil or m < best_m or (m == best_m and name_less(name, best))
end

-- Free capacities that may have a bucket: those in IDX_CAPS when the call
-- began (`stored`: their buckets may hold entries in Redis) and those placed
-- nodes reached in this call. A capacity found empty leaves `caps` (it comes
-- back if a node joins it).
local caps, stored = {}, {}
for _, c in ipairs(redis.call('ZRANGE', IDX_CAPS, 0, -1)) do
  c = tonumber(c)
  caps[c] = true
  stored[c] = true
  caps_known[c] = true
end

-- Counters of the bucket entries read (by node; an entry that disagrees with
-- them is re-filed before it is used).
local vcap, vtotal, vrc, vpar = {}, {}, {}, {}
-- Nodes this call placed: free capacity and run_count now, free capacity
-- when the call began (their Redis entries, skipped, are in that bucket),
-- in the order first placed.
local pcap, prc, pfrom, placed_order = {}, {}, {}, {}
-- joined[c]: the placed nodes now at free capacity c ({ names, scores },
-- best first).
local joined = {}
-- Redis part of bucket c as read so far: every entry (names and scores, in
-- order, placed nodes included, so the next page starts after them), the
-- first one that may not be placed yet, and whether the bucket's end was read.
local pages = {}

-- Re-file an entry of bucket c that disagrees with its node's counters
-- (free capacity `cap`, slots `par`), and forget what this call read of both
-- buckets.
local function refile_entry(node, c, cap, par)
  vcap[node], vtotal[node], vrc[node], vpar[node] = nil, nil, nil, nil
  unbucket(node, c)
  unindex_node(node)
  -- A node whose heartbeat is too old stays out (its next heartbeat puts
  -- it back).
  if num(redis.call('ZSCORE', ALIVE, node)) > since then
    index_node(node)
  end
  pages[c] = nil
  pages[cap] = nil
  if par == 0 and cap >= 1 then
    caps[cap] = true
    stored[cap] = true
  end
end

-- Reads the next page of bucket c (its entries are checked when one of
-- them is chosen).
local function read_page(c, p)
  local names, scores = p.names, p.scores
  local from = #names
  local n = math.min(math.max(math.min(8, batch), from), 500)
  local r = redis.call('ZRANGE', family(c), from, from + n - 1, 'WITHSCORES')
  for i = 1, #r, 2 do
    names[#names + 1] = r[i]
    scores[#scores + 1] = tonumber(r[i + 1])
  end
  p.done = #r < 2 * n
end

-- Whether entry (node, score) of bucket c agrees with the node's counters.
local function agrees(node, c, score)
  return vcap[node] == c and vpar[node] == 0 and family_score(fam, vtotal[node], vrc[node]) == score
end

-- Checks the entries of bucket c read and not checked yet against their
-- nodes' counters (one MGET for those not read before) and re-files those
-- that disagree; whether all agreed (else the bucket is read again).
local function check_page(c)
  local p = pages[c]
  local names, scores = p.names, p.scores
  local from = math.max(p.pos, p.checked + 1)
  if from > #names then
    return true
  end
  local keys, fresh = {}, {}
  for i = from, #names do
    local node = names[i]
    if not pfrom[node] and vcap[node] == nil then
      fresh[#fresh + 1] = node
      keys[#keys + 1] = key_cap(node)
      keys[#keys + 1] = key_cap_total(node)
      keys[#keys + 1] = key_run_count(node)
      keys[#keys + 1] = key_parallel(node)
    end
  end
  if #keys > 0 then
    local v = redis.call('MGET', unpack(keys))
    for i, node in ipairs(fresh) do
      local o = (i - 1) * 4
      vcap[node], vtotal[node], vrc[node], vpar[node] = num(v[o + 1]), num(v[o + 2]), num(v[o + 3]), num(v[o + 4])
    end
  end
  p.checked = #names
  local ok = true
  for i = from, #names do
    local node = names[i]
    if not pfrom[node] and not agrees(node, c, scores[i]) then
      refile_entry(node, c, vcap[node], vpar[node])
      ok = false
    end
  end
  return ok
end

-- The first entry of bucket c in Redis that this call did not place (name,
-- score), or nil.
local function stored_head(c)
  if not stored[c] then
    return nil
  end
  local p = pages[c]
  while true do
    if not p then
      p = { names = {}, scores = {}, pos = 1, checked = 0, done = false }
      pages[c] = p
    end
    local node = p.names[p.pos]
    if node then
      if not pfrom[node] then
        return node, p.scores[p.pos]
      end
      p.pos = p.pos + 1
    elseif p.done then
      return nil
    else
      read_page(c, p)
    end
  end
end

-- The best entry of bucket c (name, score), or nil: its first stored one or
-- the first node that joined it.
local function bucket_best(c)
  local node, s = stored_head(c)
  local j = joined[c]
  if j then
    local jn = j.names[1]
    if jn and (not node or better(j.scores[1], jn, s, node)) then
      return jn, j.scores[1]
    end
  end
  return node, s
end

-- `node` joins the nodes placed at free capacity c, in bucket order.
local function join(c, node, score)
  local j = joined[c]
  if not j then
    j = { names = {}, scores = {} }
    joined[c] = j
  end
  local names, scores = j.names, j.scores
  local k = #names
  local pos = k + 1
  if k > 0 and better(score, node, scores[k], names[k]) then
    local lo, hi = 1, k
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if better(score, node, scores[mid], names[mid]) then
        hi = mid
      else
        lo = mid + 1
      end
    end
    pos = lo
  end
  table.insert(names, pos, node)
  table.insert(scores, pos, score)
end

-- Nodes with slot tokens: read once per call, kept up to date locally.
local slotted = {}
for _, node in ipairs(redis.call('SMEMBERS', SLOTTED)) do
  if redis.call('ZSCORE', IDX_LIVE, node) then
    local v = redis.call('MGET', key_cap(node), key_cap_total(node), key_run_count(node))
    slotted[#slotted + 1] = { name = node, cap = num(v[1]), total = num(v[2]), rc = num(v[3]) }
  end
end

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

-- The best indexed node without slot tokens for `units`: its name, free
-- capacity and metric, or nil. A stored entry is checked before it is used:
-- after a re-filing, the search starts over.
local function best_indexed(units)
  while true do
    local best, best_m, best_c = nil, nil, nil
    for c, _ in pairs(caps) do
      if c >= units then
        local node, s = bucket_best(c)
        if node then
          local m = metric(s, c)
          if better(m, node, best_m, best) then
            best, best_m, best_c = node, m, c
          end
        else
          caps[c] = nil
        end
      end
    end
    if best == nil or pfrom[best] or check_page(best_c) then
      return best, best_c, best_m
    end
  end
end

-- Node `node`, best entry of bucket c, takes a task of `units`; returns its
-- free capacity and run_count now.
local function place_indexed(node, c, units)
  local cap, rc
  if pfrom[node] then
    local j = joined[c]
    table.remove(j.names, 1)
    table.remove(j.scores, 1)
    cap, rc = pcap[node], prc[node]
  else
    cap, rc = vcap[node], vrc[node]
    pfrom[node] = cap
    placed_order[#placed_order + 1] = node
  end
  cap, rc = cap - units, rc + 1
  pcap[node], prc[node] = cap, rc
  if cap >= 1 then
    caps[cap] = true
    join(cap, node, family_score(fam, vtotal[node], rc))
  end
  return cap, rc
end

-- The largest cap_total among live (indexed) nodes, or nil when none is.
local function largest_live()
  local r = redis.call('ZREVRANGE', IDX_LIVE, 0, 0, 'WITHSCORES')
  return r[1] and tonumber(r[2])
end

-- The head tasks this call may consume; consumed ones are trimmed at the end.
local tasks = redis.call('LRANGE', PENDING, 0, batch - 1)
local consumed = 0
-- Failed attempts of those tasks (one read for all of them).
local attempts = {}
if max_attempts > 0 and #tasks > 0 and redis.call('EXISTS', ATTEMPTS) == 1 then
  for s = 1, #tasks, 500 do
    local v = redis.call('HMGET', ATTEMPTS, unpack(tasks, s, math.min(s + 499, #tasks)))
    for i = 1, #v do
      attempts[s + i - 1] = num(v[i])
    end
  end
end

-- Placed tasks per node (in placement order) and the nodes' new counters,
-- written at the end of the call in one command per node queue and one MSET:
-- this call reads them from its own tables, and no other script
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
local ccap, crc, counters_order = {}, {}, {}
local function set_counters(node, cap, rc)
  if not ccap[node] then
    counters_order[#counters_order + 1] = node
  end
  ccap[node], crc[node] = cap, rc
end

local out = { 'more' }
local placed_n = 0
-- Tasks buried by this call: their attempt count went with them (an equal
-- task behind them starts from none).
local buried = {}
local function dead(raw, reason)
  bury(raw, reason, nil)
  buried[raw] = true
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
  local a = 0
  if not buried[raw] then
    a = attempts[consumed + 1] or 0
  end
  if units and max_attempts > 0 and a >= max_attempts then
    reason = 'failed ' .. a .. ' attempts (max ' .. max_attempts .. ')'
    local last = redis.call('HGET', LAST_ERROR, raw)
    if last then
      reason = reason .. ': ' .. last
    end
  end
  if reason then
    dead(raw, reason)
  else
    local choice, choice_c, choice_m = best_indexed(units)
    local slot_choice = nil
    if #slotted > 0 then
      local tokens = token_counts()
      local best_m, best = choice_m, choice
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
    local node = nil
    if slot_choice then
      local s = slotted[slot_choice]
      node = s.name
      s.cap = s.cap - units
      s.rc = s.rc + 1
      set_counters(node, s.cap, s.rc)
      redis.call('LREM', SLOTS, -1, node)
    elseif choice then
      node = choice
      set_counters(node, place_indexed(node, choice_c, units))
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
    if node then
      enqueue(node, raw)
      consumed = consumed + 1
      placed_n = placed_n + 1
      out[#out + 1] = 'placed'
      out[#out + 1] = node
      out[#out + 1] = raw
    end
  end
end

-- The writes, grouped.
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
    args[#args + 1] = int_arg(ccap[node])
    args[#args + 1] = key_run_count(node)
    args[#args + 1] = int_arg(crc[node])
  end
  redis.call('MSET', unpack(args))
end
-- Placed nodes move from their first bucket to their last, in every active
-- family: one ZREM and one ZADD per bucket.
local fams = families()
local moves, move_order = {}, {}
for i = 1, #fams do
  moves[i] = {}
end
local function moves_of(i, c)
  local m = moves[i][c]
  if not m then
    m = { rem = {}, add = {} }
    moves[i][c] = m
    move_order[#move_order + 1] = { i, c }
  end
  return m
end
local new_caps = {}
for _, node in ipairs(placed_order) do
  local from, cap, total, rc = pfrom[node], pcap[node], vtotal[node], prc[node]
  for i, f in ipairs(fams) do
    local rem = moves_of(i, from).rem
    rem[#rem + 1] = node
    if cap >= 1 then
      local add = moves_of(i, cap).add
      add[#add + 1] = int_arg(family_score(f, total, rc))
      add[#add + 1] = node
    end
  end
  if cap >= 1 and not caps_known[cap] then
    caps_known[cap] = true
    new_caps[#new_caps + 1] = int_arg(cap)
    new_caps[#new_caps + 1] = int_arg(cap)
  end
end
for _, ic in ipairs(move_order) do
  local m = moves[ic[1]][ic[2]]
  local key = FAMILY_KEY[fams[ic[1]]](ic[2])
  for s = 1, #m.rem, 1000 do
    redis.call('ZREM', key, unpack(m.rem, s, math.min(s + 999, #m.rem)))
  end
  for s = 1, #m.add, 1000 do
    redis.call('ZADD', key, unpack(m.add, s, math.min(s + 999, #m.add)))
  end
end
for s = 1, #new_caps, 1000 do
  redis.call('ZADD', IDX_CAPS, unpack(new_caps, s, math.min(s + 999, #new_caps)))
end
-- Buckets this call read to their end and emptied leave IDX_CAPS.
local emptied = {}
for c, p in pairs(pages) do
  local j = joined[c]
  if p.done and not (j and #j.names > 0) then
    local left = false
    for _, node in ipairs(p.names) do
      left = left or pfrom[node] ~= c
    end
    if not left then
      emptied[#emptied + 1] = int_arg(c)
    end
  end
end
for s = 1, #emptied, 1000 do
  redis.call('ZREM', IDX_CAPS, unpack(emptied, s, math.min(s + 999, #emptied)))
end
if consumed > 0 then
  redis.call('LTRIM', PENDING, consumed, -1)
end
gauge('placed', placed_n)
return out
