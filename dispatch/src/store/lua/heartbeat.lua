-- heartbeat: RUNNING (same lease) -> RUNNING with a later deadline and new progress.
-- The deadline never passes started_at + timeout + lease_ms, so a job over its timeout loses
-- its lease even if its worker keeps beating.
-- KEYS: the partition's (lib.lua), record
-- ARGV: retention, id, lease_id, lease_ms, has_progress (0/1), progress
-- Reply: OK, cancel_requested, deadline | NOT_FOUND | FAILED_PRECONDITION, reason.
local rk, id, lease_id, lease_ms = KEYS[HEADER + 1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local job = load(rk, id, { 'lease_id', 'started_at', 'timeout', 'cancel_requested' })
if not job then return { 'NOT_FOUND' } end
if job.state ~= 'RUNNING' or job.lease_id ~= lease_id then
  return { 'FAILED_PRECONDITION', 'lease ' .. lease_id .. ' is not held (job is ' .. job.state .. ')' }
end
local now = tonumber(clock())
local deadline = math.min(now + lease_ms, tonumber(job.started_at) + tonumber(job.timeout) + lease_ms)
redis.call('HSET', rk, 'lease_deadline', deadline)
if ARGV[5] == '1' then redis.call('HSET', rk, 'progress', ARGV[6]) end
zset(TIMERS, id, deadline)
return { 'OK', job.cancel_requested or '0', tostring(deadline) }
