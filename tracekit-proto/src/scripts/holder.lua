-- holder.lua: ARGV[1] = node. Returns { host, pid } of the registration that
-- holds the node's lease while it heartbeats within its lease time, or {}.
-- Read only: register.lua checks again, atomically.
local node = ARGV[1]
local held = redis.call('HMGET', key_lease(node), 'token', 'host', 'pid', 'lease_ms')
if not held[1] then
  return {}
end
local hb = redis.call('ZSCORE', ALIVE, node)
local since = tonumber(redis.call('GET', WATCH_SINCE)) or 0
if hb and now_ms() - math.max(tonumber(hb), since) < num(held[4]) then
  return { held[2], held[3] }
end
return {}
