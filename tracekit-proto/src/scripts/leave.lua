-- leave.lua: ARGV 1 node, 2 lease token. A worker that is stopping takes
-- itself out of placement first, so nothing is placed on it while it hands
-- tasks back: it leaves the index (its heartbeats no longer put it back) and
-- its queued, not yet taken tasks go back to the head of pending. What it
-- runs stays in flight until it reports it. Returns the number of queued
-- tasks handed back, or -1 when another registration holds the lease.
local node, token = ARGV[1], ARGV[2]
if not lease_is(node, token) then
  return -1
end
redis.call('SADD', LEAVING, node)
unindex_node(node)
local queued = redis.call('LRANGE', key_queue(node), 0, -1)
redis.call('DEL', key_queue(node))
local v = redis.call('MGET', key_cap(node), key_cap_total(node), key_run_count(node), key_parallel(node))
local cap, total, rc, par = num(v[1]), num(v[2]), num(v[3]), num(v[4])
for _, raw in ipairs(queued) do
  cap = cap + held_units(raw)
  if rc > 0 then
    rc = rc - 1
  end
end
if v[2] and cap > total then
  cap = total
end
redis.call('SET', key_cap(node), cap)
redis.call('SET', key_run_count(node), rc)
if par > 0 then
  -- Its slot tokens go; the ones its running tasks give back are dropped by
  -- the next registration.
  redis.call('LREM', SLOTS, 0, node)
end
gauge('placed', -#queued)
push_head(queued)
return #queued
