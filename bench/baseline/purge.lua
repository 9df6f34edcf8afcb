-- Purge by tag: delete every member of the tag set, then the set itself.
--
--   EVALSHA <sha> 1 tag:<t>
--
-- Returns the number of member keys deleted (members that no longer exist
-- are not counted). The whole loop runs inside the server and blocks it.
local members = redis.call('SMEMBERS', KEYS[1])
local deleted = 0
for _, key in ipairs(members) do
    deleted = deleted + redis.call('DEL', key)
end
redis.call('DEL', KEYS[1])
return deleted
