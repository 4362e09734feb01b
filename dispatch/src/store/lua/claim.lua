-- claim: QUEUED -> RUNNING, only for the attempt named in the run message; grants a lease.
-- ARGV: id, attempt, worker_id, lease_id, lease_ms, now
-- Reply: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local id, attempt, worker_id, lease_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lease_ms, now = tonumber(ARGV[5]), tonumber(ARGV[6])
local job = load(id, { 'queue', 'type', 'attempt', 'traceparent' })
if not job then return { 'NOT_FOUND' } end
if job.state ~= 'QUEUED' or job.attempt ~= attempt then
  return { 'FAILED_PRECONDITION', 'job is ' .. job.state .. ' on attempt ' .. job.attempt }
end
set_state(job, 'RUNNING', now)
redis.call('HSET', jkey(id), 'worker_id', worker_id, 'lease_id', lease_id,
  'lease_deadline', now + lease_ms, 'started_at', now)
redis.call('HDEL', jkey(id), 'progress')
redis.call('ZREM', P .. 'queued', id)
redis.call('ZADD', P .. 'leases', now + lease_ms, id)
emit(job, 'processing', tonumber(attempt), now, worker_id)
return reply('OK', id)
