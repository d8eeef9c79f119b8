-- deregister.lua: ARGV 1 node, 2 lease token. A worker leaves cleanly:
-- whatever it still holds goes back to the head of pending (no attempt
-- counted), its bookkeeping is reset, it leaves the alive set and gives up its
-- lease. Returns the number of tasks handed back, or -1 (and changes
-- nothing) when another registration holds the lease: a worker that was
-- replaced must not take its successor's work back.
local node, token = ARGV[1], ARGV[2]
local holder = redis.call('HGET', key_lease(node), 'token')
if holder and holder ~= token then
  return -1
end
local tasks = take_back(node, false)
push_head(tasks)
redis.call('ZREM', ALIVE, node)
redis.call('SREM', LEAVING, node)
redis.call('DEL', key_lease(node))
redis.call('HDEL', NODE_RUN, node)
redis.call('ZADD', LEFT, now_ms(), node)
return #tasks
