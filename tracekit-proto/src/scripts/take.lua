-- take.lua: ARGV[1] = node. Moves the oldest queued task of the node to its
-- in-flight list and returns { 'task', raw }, or { 'empty' }, or { 'lost' }
-- when the node is not alive (its queue was taken back).
local node = ARGV[1]
if not redis.call('ZSCORE', ALIVE, node) then
  return { 'lost' }
end
local raw = redis.call('LMOVE', 'q:' .. node, 'inflight:' .. node, 'LEFT', 'RIGHT')
if not raw then
  return { 'empty' }
end
return { 'task', raw }
