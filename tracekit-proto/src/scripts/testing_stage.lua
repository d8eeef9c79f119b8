-- testing_stage.lua (tests only): ARGV 1 node, 2 free capacity, 3 run_count.
-- Sets the node's counters as a test scenario needs them and re-files it in
-- the placement index, as the scripts that change counters do.
local node = ARGV[1]
local indexed = redis.call('ZSCORE', IDX_LIVE, node)
unindex_node(node)
redis.call('SET', key_cap(node), ARGV[2])
redis.call('SET', key_run_count(node), ARGV[3])
if indexed then
  index_node(node)
end
return 1
