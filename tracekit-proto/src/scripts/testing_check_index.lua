-- testing_check_index.lua (tests only): checks the placement index against
-- the counters and returns every disagreement (empty = consistent).
local bad = {}
local function say(s)
  bad[#bad + 1] = s
end
-- Every bucket entry, from the keys themselves (a test may use KEYS).
local seen = {}
local families = { first = key_index_first, inst = key_index_instances, vcpu = key_index_vcpu }
for fam, builder in pairs(families) do
  local prefix = builder('')
  for _, key in ipairs(redis.call('KEYS', builder('*'))) do
    local c = tonumber(string.sub(key, #prefix + 1))
    local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    if #entries > 0 and fam == 'first' and not redis.call('ZSCORE', IDX_CAPS, c) then
      say('capacity ' .. c .. ' has a bucket but is not in ' .. IDX_CAPS)
    end
    for i = 1, #entries, 2 do
      local node, score = entries[i], tonumber(entries[i + 1])
      local v = redis.call('MGET', key_cap(node), key_cap_total(node), key_run_count(node), key_parallel(node))
      local cap, total, rc, par = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0
      local want = 0
      if fam == 'inst' then
        want = rc
      elseif fam == 'vcpu' then
        want = total
      end
      if not redis.call('ZSCORE', IDX_LIVE, node) then
        say(node .. ' is in ' .. key .. ' but not indexed')
      end
      if cap ~= c or par > 0 or score ~= want then
        say(node .. ' in ' .. key .. ' with score ' .. score .. ': cap=' .. cap .. ' total=' .. total .. ' rc=' .. rc .. ' parallel=' .. par)
      end
      seen[fam .. ' ' .. node] = (seen[fam .. ' ' .. node] or 0) + 1
    end
  end
end
for _, c in ipairs(redis.call('ZRANGE', IDX_CAPS, 0, -1)) do
  if redis.call('ZCARD', key_index_first(c)) == 0 then
    say('capacity ' .. c .. ' is in ' .. IDX_CAPS .. ' with an empty bucket')
  end
end
local live = redis.call('ZRANGE', IDX_LIVE, 0, -1, 'WITHSCORES')
for i = 1, #live, 2 do
  local node, score = live[i], tonumber(live[i + 1])
  local v = redis.call('MGET', key_cap(node), key_cap_total(node), key_parallel(node))
  local cap, total, par = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0
  if not redis.call('ZSCORE', ALIVE, node) then
    say(node .. ' is indexed but not alive')
  end
  if score ~= total then
    say(node .. ' indexed with total ' .. score .. ', cap_total is ' .. total)
  end
  local want = 0
  if par == 0 and cap >= 1 then
    want = 1
  end
  for fam, _ in pairs(families) do
    if (seen[fam .. ' ' .. node] or 0) ~= want then
      say(node .. ' is in ' .. (seen[fam .. ' ' .. node] or 0) .. ' ' .. fam .. ' buckets, should be in ' .. want)
    end
  end
end
return bad
