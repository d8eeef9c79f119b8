-- heartbeat.lua: ARGV 1 node, 2 lease token. Refreshes the node's heartbeat;
-- returns 1, or 0 when this registration is over: the node is not alive
-- (never registered, deregistered, or declared dead and its work taken back)
-- or another registration holds its lease. The worker must then stop what it
-- runs (it was handed to others) and register again. A node that a placement
-- found stale (and took out of the index) is indexed again, unless it is
-- leaving.
local node, token = ARGV[1], ARGV[2]
if not redis.call('ZSCORE', ALIVE, node) then
  return 0
end
if not lease_is(node, token) then
  return 0
end
redis.call('ZADD', ALIVE, now_ms(), node)
if not redis.call('ZSCORE', IDX_LIVE, node) and redis.call('SISMEMBER', LEAVING, node) == 0 then
  index_node(node)
end
return 1
