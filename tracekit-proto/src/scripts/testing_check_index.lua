-- testing_check_index.lua (tests only): checks the placement index (its
-- active families) against the counters and returns every disagreement
-- (empty = consistent). IDX_CAPS may name emptied buckets, never miss one.
local bad = {}
local function say(s)
  bad[#bad + 1] = s
end
-- Every bucket entry, from the keys themselves (a test may use KEYS).
local seen = {}
local families = {}
for _, f in ipairs(redis.call('SMEMBERS', IDX_FAMILIES)) do
  families[f] = FAMILY_KEY[f]
end
for fam, builder in pairs(families) do
  local prefix = builder('')
  for _, key in ipairs(redis.call('KEYS', builder('*'))) do
    local c = tonumber(string.sub(key, #prefix + 1))
    local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    if #entries > 0 and not redis.call('ZSCORE', IDX_CAPS, c) then
      say('capacity ' .. c .. ' has a bucket but is not in ' .. IDX_CAPS)
    end
    for i = 1, #entries, 2 do
      local node, score = entries[i], tonumber(entries[i + 1])
      local v = redis.call('MGET', key_cap(node), key_cap_total(node), key_run_count(node), key_parallel(node))
      local cap, total, rc, par = tonumber(v[1]) or 0, tonumber(v[2]) or 0, tonumber(v[3]) or 0, tonumber(v[4]) or 0
      local want = family_score(fam, total, rc)
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
