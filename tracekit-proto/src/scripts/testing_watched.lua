-- testing_watched.lua (tests only): the centrals have been watching the
-- nodes since the epoch, without a gap, up to now.
redis.call('SET', WATCH_SINCE, 0)
redis.call('SET', WATCH_LAST, now_ms())
return 1
