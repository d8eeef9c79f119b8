-- deregister.lua: ARGV[1] = node. A worker leaves cleanly: whatever it still
-- holds goes back to the head of pending (no attempt counted), its bookkeeping
-- is reset and it leaves the alive set. Returns the number of tasks handed back.
local node = ARGV[1]
local tasks = take_back(node, false)
push_head(tasks)
redis.call('ZREM', ALIVE, node)
redis.call('ZADD', LEFT, now_ms(), node)
return #tasks
