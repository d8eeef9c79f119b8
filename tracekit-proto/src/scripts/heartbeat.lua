-- heartbeat.lua: ARGV 1 node, 2 lease token, 3 'follow' or 'fixed', 4 the
-- run the agent records into ('' = none). Refreshes the node's heartbeat;
-- an agent that follows the controller's runs says which run it records
-- into (NODE_RUN, what `run stop` waits on). Returns { 1, the current run
-- or '' }, or { 0 } when this registration is over: the node is not alive
-- (never registered, deregistered, or declared dead and its work taken back)
-- or another registration holds its lease. The worker must then stop what it
-- runs (it was handed to others) and register again. A node that a placement
-- found stale (and took out of the index) is indexed again, unless it is
-- leaving.
local node, token, mode, run = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if not redis.call('ZSCORE', ALIVE, node) then
  return { 0 }
end
if not lease_is(node, token) then
  return { 0 }
end
local current = redis.call('GET', RUN_CURRENT)
if mode == 'follow' then
  -- Written when it changes. A node noted as recording the current run (by
  -- a take) has switched: a heartbeat composed before the switch must not
  -- move it back.
  local stored = redis.call('HGET', NODE_RUN, node)
  if stored ~= run and not (current and stored == current) then
    redis.call('HSET', NODE_RUN, node, run)
  end
else
  redis.call('HDEL', NODE_RUN, node)
end
redis.call('ZADD', ALIVE, now_ms(), node)
if not redis.call('ZSCORE', IDX_LIVE, node) and redis.call('SISMEMBER', LEAVING, node) == 0 then
  index_node(node)
end
return { 1, current or '' }
