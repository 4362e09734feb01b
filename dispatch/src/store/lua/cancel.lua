-- cancel: SCHEDULED|QUEUED -> CANCELLED; RUNNING -> RUNNING with cancel_requested = 1 (the
-- worker learns it from its heartbeat); CANCELLED stays (OK); SUCCEEDED|FAILED refused.
-- KEYS: the partition's (lib.lua), record, payload
-- ARGV: retention, id, reason
-- Reply: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local rk, pk, id, reason = KEYS[HEADER + 1], KEYS[HEADER + 2], ARGV[2], ARGV[3]
local job = load(rk, id, { 'type', 'attempt', 'traceparent', 'ret' })
if not job then return { 'NOT_FOUND' } end
local now = clock()
if job.state == 'SCHEDULED' or job.state == 'QUEUED' then
  finish(job, 'CANCELLED', now)
  put(job, 'error', reason)
  put(job, 'error_retryable', '0')
  put(job, 'error_attempt', job.attempt)
  emit(job, 'cancelled', job.attempt, now, nil, reason)
elseif job.state == 'RUNNING' then
  redis.call('HSET', rk, 'cancel_requested', 1, 'cancel_reason', reason, 'updated_at', now)
  redis.call('PUBLISH', rk, 0)
elseif job.state ~= 'CANCELLED' then
  return { 'FAILED_PRECONDITION', 'job is already ' .. job.state }
end
return reply('OK', rk, pk)
