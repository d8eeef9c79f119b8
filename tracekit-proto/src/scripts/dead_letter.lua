-- dead_letter.lua: ARGV 1 node, 2 raw task, 3 reason, 4 the lease token it
-- was taken under ('' = not said). Like complete.lua, but the task goes to
-- the dead-letter list with the reason. Returns 1 or 0.
local node, raw, reason = ARGV[1], ARGV[2], ARGV[3]
if not holds(node, ARGV[4]) or redis.call('LREM', key_inflight(node), 1, raw) == 0 then
  return 0
end
release(node, raw)
bury(raw, reason, node)
return 1
