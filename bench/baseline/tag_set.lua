-- Tag write as one script: the value plus its tag sets, in one EVALSHA.
--
--   EVALSHA <sha> <1 + numtags> key tag:<t1> ... tag:<tn> value ttl
--
-- KEYS[1]      the cache key
-- KEYS[2..]    the tag sets (tag:<t>), declared as keys so that ACLs and
--              cluster slot checks see them
-- ARGV[1]      the value
-- ARGV[2]      the TTL in seconds; each tag set lives 300 s longer than its keys
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
for i = 2, #KEYS do
    redis.call('SADD', KEYS[i], KEYS[1])
    redis.call('EXPIRE', KEYS[i], ttl + 300)
end
return redis.status_reply('OK')
