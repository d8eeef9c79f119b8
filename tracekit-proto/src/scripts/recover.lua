-- recover.lua: every registered node whose last heartbeat is older than
-- ARGV[1] ms and still marked alive is declared dead: its in-flight tasks
-- (one failed attempt each) and queued tasks go back to the head of pending
-- in their original order, its bookkeeping is reset and it leaves the alive set.
-- Returns { node1, count1, node2, count2, ... }.
local timeout = num(ARGV[1])
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', ALIVE, '-inf', now - timeout)
local back = {}
local out = {}
for _, node in ipairs(expired) do
  local tasks = take_back(node, true)
  for _, raw in ipairs(tasks) do
    back[#back + 1] = raw
  end
  redis.call('ZREM', ALIVE, node)
  redis.call('ZADD', LEFT, now, node)
  out[#out + 1] = node
  out[#out + 1] = #tasks
end
push_head(back)
return out
