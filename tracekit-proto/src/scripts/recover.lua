-- recover.lua: every registered node whose last heartbeat is older than
-- ARGV[1] ms and still marked alive is declared dead: its in-flight tasks
-- (one failed attempt each) and queued tasks go back to the head of pending
-- in their original order, its bookkeeping is reset and it leaves the alive set.
-- ARGV[2] = the longest gap between two checks (of any central) that still
-- counts as watching. After a longer gap (Redis was down, or no central ran)
-- the watch starts again, and nobody is declared dead before a full timeout
-- of it: heartbeats that Redis could not receive are not missed ones.
-- Returns { node1, count1, node2, count2, ... }.
local timeout = num(ARGV[1])
local gap = num(ARGV[2])
local now = now_ms()
local last = tonumber(redis.call('GET', WATCH_LAST))
local since = tonumber(redis.call('GET', WATCH_SINCE))
redis.call('SET', WATCH_LAST, now)
if not last or not since or now - last > gap or now < last then
  since = now
  redis.call('SET', WATCH_SINCE, now)
end
if now - since < timeout then
  return {}
end
local expired = redis.call('ZRANGEBYSCORE', ALIVE, '-inf', now - timeout)
local back = {}
local out = {}
for _, node in ipairs(expired) do
  local tasks = take_back(node, true)
  for _, raw in ipairs(tasks) do
    back[#back + 1] = raw
  end
  redis.call('ZREM', ALIVE, node)
  redis.call('SREM', LEAVING, node)
  redis.call('ZADD', LEFT, now, node)
  out[#out + 1] = node
  out[#out + 1] = #tasks
end
push_head(back)
return out
