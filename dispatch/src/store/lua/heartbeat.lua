-- heartbeat: RUNNING (same lease) -> RUNNING with a later deadline and new progress.
-- The deadline never passes started_at + timeout + lease_ms, so a job over its timeout loses
-- its lease even if its worker keeps beating.
-- ARGV: id, lease_id, lease_ms, has_progress (0/1), progress, now
-- Reply: OK, cancel_requested, deadline | NOT_FOUND | FAILED_PRECONDITION, reason.
local id, lease_id, lease_ms, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[6])
local job = load(id, { 'lease_id', 'started_at', 'timeout', 'cancel_requested' })
if not job then return { 'NOT_FOUND' } end
if job.state ~= 'RUNNING' or job.lease_id ~= lease_id then
  return { 'FAILED_PRECONDITION', 'lease ' .. lease_id .. ' is not held (job is ' .. job.state .. ')' }
end
local deadline = math.min(now + lease_ms, tonumber(job.started_at) + tonumber(job.timeout) + lease_ms)
redis.call('HSET', jkey(id), 'lease_deadline', deadline)
if ARGV[4] == '1' then redis.call('HSET', jkey(id), 'progress', ARGV[5]) end
redis.call('ZADD', P .. 'leases', deadline, id)
return { 'OK', job.cancel_requested, tostring(deadline) }
