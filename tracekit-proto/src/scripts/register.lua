-- register.lua: a worker process (re)joins. ARGV: 1 node, 2 capacity units,
-- 3 logical cores, 4 allocation ratio, 5 parallel slots (0 = capacity only),
-- 6 reset capacity (1/0), 7 clear own queue (1/0), 8 lease token (new for
-- each registration), 9 host, 10 pid, 11 lease ms.
-- One live agent per node id: while another host's agent holds the node's
-- lease and heartbeats within its lease time, the registration is refused
-- with { 'held', host, pid }. The same host's previous holder is known to be
-- gone (the agent holds a local lock on the node id before it registers).
-- A registering process runs nothing yet, so whatever a previous process of
-- this node left in flight is orphaned: it goes back to the head of pending
-- (one failed attempt each). Bookkeeping is recomputed from what is really
-- queued for the node, so stale values cannot survive a restart; the total is
-- overwritten only with reset (or when absent).
-- Returns { cap_total, cap, orphans requeued, queued }.
local node, capacity = ARGV[1], num(ARGV[2])
local reset, clear = ARGV[6] == '1', ARGV[7] == '1'
local token, host, pid, lease_ms = ARGV[8], ARGV[9], ARGV[10], num(ARGV[11])
local held = redis.call('HMGET', key_lease(node), 'token', 'host', 'pid', 'lease_ms')
if held[1] and held[1] ~= token and held[2] ~= host then
  -- Its heartbeat's age counts from when the centrals last started
  -- watching: heartbeats Redis could not receive are not missed ones.
  local hb = redis.call('ZSCORE', ALIVE, node)
  local since = tonumber(redis.call('GET', WATCH_SINCE)) or 0
  if hb and now_ms() - math.max(tonumber(hb), since) < num(held[4]) then
    return { 'held', held[2], held[3] }
  end
end
-- Out of the index under the old counters; back in under the new ones below.
unindex_node(node)
local orphans = redis.call('LRANGE', key_inflight(node), 0, -1)
local back = {}
for _, raw in ipairs(orphans) do
  redis.call('HINCRBY', ATTEMPTS, raw, 1)
  redis.call('HSET', LAST_ERROR, raw, 'its node restarted while running it')
  back[#back + 1] = raw
end
redis.call('DEL', key_inflight(node), key_taken_at(node))
stat('failed', #orphans)
gauge('running', -#orphans)
if clear then
  local cleared = redis.call('LRANGE', key_queue(node), 0, -1)
  for _, raw in ipairs(cleared) do
    back[#back + 1] = raw
  end
  redis.call('DEL', key_queue(node))
  gauge('placed', -#cleared)
end
push_head(back)
local queued = redis.call('LRANGE', key_queue(node), 0, -1)
local holding = 0
for _, raw in ipairs(queued) do
  holding = holding + held_units(raw)
end
local total = redis.call('GET', key_cap_total(node))
if reset or not total then
  total = capacity
else
  total = num(total)
end
local parallel = num(ARGV[5])
redis.call('SET', key_cap_total(node), total)
redis.call('SET', key_cap(node), total - holding)
redis.call('SET', key_run_count(node), #queued)
redis.call('SET', key_phys(node), ARGV[3])
redis.call('SET', key_ratio(node), ARGV[4])
redis.call('SET', key_parallel(node), parallel)
redis.call('LREM', SLOTS, 0, node)
for _ = 1, parallel - #queued do
  redis.call('RPUSH', SLOTS, node)
end
if parallel > 0 then
  redis.call('SADD', SLOTTED, node)
else
  redis.call('SREM', SLOTTED, node)
end
redis.call('ZADD', REGISTRY, 0, node)
redis.call('ZREM', LEFT, node)
redis.call('ZADD', ALIVE, now_ms(), node)
redis.call('SREM', LEAVING, node)
redis.call('HSET', key_lease(node), 'token', token, 'host', host, 'pid', pid, 'lease_ms', lease_ms)
index_node(node)
return { total, total - holding, #orphans, #queued }
