-- take.lua: ARGV 1 node, 2 request token (unique per take, the same on a
-- retry), 3 lease token, 4 (optional) the run the agent records into, for
-- an agent that follows the controller's runs: while that run is not the
-- current one nothing is taken (the agent learns of the new run with its
-- next heartbeat), and taking notes the run in NODE_RUN, so `run stop` knows
-- every node that has a task of the run. Moves the oldest queued task of the node to its
-- in-flight list and returns { 'task', raw } (noting when it was taken), or
-- { 'empty' }, or { 'lost' } when the node is not alive (its queue was taken
-- back) or this registration no longer holds its lease. The request token
-- remembers the answer for a
-- minute, so a call retried after a lost reply returns the same task instead
-- of taking a second one.
local node, token, lease, run = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local memo = key_take_memo(token)
local prev = redis.call('GET', memo)
local alive = redis.call('ZSCORE', ALIVE, node) and lease_is(node, lease)
if prev then
  -- The answer of a call whose reply was lost, if the task is still ours.
  if alive and redis.call('LPOS', key_inflight(node), prev) then
    return { 'task', prev }
  end
  return { 'lost' }
end
if not alive then
  return { 'lost' }
end
if run and redis.call('GET', RUN_CURRENT) ~= run then
  return { 'empty' }
end
local raw = redis.call('LMOVE', key_queue(node), key_inflight(node), 'LEFT', 'RIGHT')
if not raw then
  return { 'empty' }
end
if run then
  redis.call('HSET', NODE_RUN, node, run)
end
redis.call('SET', memo, raw, 'PX', 60000)
redis.call('HSET', key_taken_at(node), raw, now_ms())
gauge('placed', -1)
gauge('running', 1)
return { 'task', raw }
