-- cancel: SCHEDULED|QUEUED -> CANCELLED; RUNNING -> RUNNING with cancel_requested = 1 (the
-- worker learns it from its heartbeat); CANCELLED stays (OK); SUCCEEDED|FAILED refused.
-- ARGV: id, reason, now
-- Reply: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local id, reason, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local job = load(id, { 'queue', 'type', 'attempt', 'traceparent' })
if not job then return { 'NOT_FOUND' } end
if job.state == 'SCHEDULED' or job.state == 'QUEUED' then
  redis.call('ZREM', P .. 'scheduled', id)
  redis.call('ZREM', P .. 'queued', id)
  set_state(job, 'CANCELLED', now)
  redis.call('HSET', jkey(id), 'finished_at', now, 'error', reason, 'error_retryable', 0, 'error_attempt', job.attempt)
  emit(job, 'cancelled', tonumber(job.attempt), now, nil, reason)
elseif job.state == 'RUNNING' then
  redis.call('HSET', jkey(id), 'cancel_requested', 1, 'cancel_reason', reason, 'updated_at', now)
  redis.call('PUBLISH', P .. 'watch:' .. id, 0)
elseif job.state ~= 'CANCELLED' then
  return { 'FAILED_PRECONDITION', 'job is already ' .. job.state }
end
return reply('OK', id)
