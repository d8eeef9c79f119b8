-- dead_requeue.lua: ARGV[1] = the id of a dead letter (a prefix of at least
-- 4 hex digits of its SHA-1, see dead_list.lua), or '' for all of them. The
-- tasks go back to the tail of pending, byte for byte, with no failed
-- attempt counted, and no longer count as dead. Returns { requeued, matched }:
-- with an id, nothing is requeued unless exactly one letter matches.
local want = ARGV[1]
local entries = redis.call('LRANGE', DEAD, 0, -1)
local pick = {}
for _, e in ipairs(entries) do
  if want == '' or string.sub(redis.sha1hex(e), 1, #want) == want then
    pick[#pick + 1] = e
  end
end
if want ~= '' and #pick ~= 1 then
  return { 0, #pick }
end
local raws = {}
for i, e in ipairs(pick) do
  local ok, d = pcall(cjson.decode, e)
  if not ok or type(d) ~= 'table' or type(d['task']) ~= 'string' then
    return redis.error_reply('dead letter ' .. string.sub(redis.sha1hex(e), 1, 12) .. ' holds no task')
  end
  if d['truncated'] then
    return redis.error_reply('dead letter ' .. string.sub(redis.sha1hex(e), 1, 12) .. ' holds only the head of a task over the size limit: it cannot run')
  end
  raws[i] = d['task']
end
if want == '' then
  redis.call('DEL', DEAD)
else
  redis.call('LREM', DEAD, 1, pick[1])
end
for _, raw in ipairs(raws) do
  redis.call('HDEL', ATTEMPTS, raw)
  redis.call('HDEL', LAST_ERROR, raw)
  redis.call('RPUSH', PENDING, raw)
end
stat('dead', -#raws)
return { #raws, #pick }
