-- due (timers loop, first step): the ids whose timer is due by Redis's clock, at most `limit`.
-- The caller reads what it needs of them and hands their keys to tick.lua.
-- KEYS: the partition's (lib.lua; only timers is read)
-- ARGV: retention (unused), limit
-- Reply: ids, earliest due first.
return redis.call('ZRANGEBYSCORE', TIMERS, '-inf', clock(), 'LIMIT', 0, tonumber(ARGV[2]))
