-- dead_clear.lua: drops every dead letter (they still count as dead in the
-- run's counters: those tasks did not run). Returns how many were dropped.
local n = redis.call('LLEN', DEAD)
redis.call('DEL', DEAD)
return n
