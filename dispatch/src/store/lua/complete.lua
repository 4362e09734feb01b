-- complete: RUNNING (same lease) -> SUCCEEDED. The same report again is a no-op (OK);
-- any other lease gets FAILED_PRECONDITION and changes nothing.
-- ARGV: id, lease_id, result, now
-- Reply: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local id, lease_id, now = ARGV[1], ARGV[2], tonumber(ARGV[4])
local job = load(id, { 'lease_id', 'done_lease', 'done_kind', 'queue', 'type', 'attempt', 'worker_id', 'traceparent' })
if not job then return { 'NOT_FOUND' } end
if job.state == 'RUNNING' and job.lease_id == lease_id then
  set_state(job, 'SUCCEEDED', now)
  redis.call('HSET', jkey(id), 'result', ARGV[3], 'finished_at', now, 'done_lease', lease_id, 'done_kind', 'complete')
  redis.call('HDEL', jkey(id), 'lease_id', 'lease_deadline')
  redis.call('ZREM', P .. 'leases', id)
  emit(job, 'complete', tonumber(job.attempt), now, job.worker_id)
  return reply('OK', id)
end
if job.done_lease == lease_id and job.done_kind == 'complete' then return reply('OK', id) end
return { 'FAILED_PRECONDITION', 'lease ' .. lease_id .. ' is not held (job is ' .. job.state .. ')' }
