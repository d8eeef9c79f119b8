-- heartbeat.lua: ARGV[1] = node. Refreshes the node's heartbeat; returns 1, or
-- 0 when the node is not alive (never registered, deregistered, or declared
-- dead and its work taken back): the worker must register again. A node that
-- a placement found stale (and took out of the index) is indexed again.
local node = ARGV[1]
if not redis.call('ZSCORE', ALIVE, node) then
  return 0
end
redis.call('ZADD', ALIVE, now_ms(), node)
if not redis.call('ZSCORE', IDX_LIVE, node) then
  index_node(node)
end
return 1
