-- dead_list.lua: ARGV 1 start, 2 stop (LRANGE indexes). Returns
-- { id1, entry1, id2, entry2, ... }: a dead letter's id is the SHA-1 of its
-- entry, so it names the same letter whoever computes it, without a counter.
local out = {}
for _, e in ipairs(redis.call('LRANGE', DEAD, ARGV[1], ARGV[2])) do
  out[#out + 1] = redis.sha1hex(e)
  out[#out + 1] = e
end
return out
