-- retry: FAILED|CANCELLED -> QUEUED on a new attempt, with a fresh budget of max_attempts.
-- ARGV: id, now
-- Reply: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local id, now = ARGV[1], tonumber(ARGV[2])
local job = load(id, { 'queue', 'type', 'attempt', 'traceparent' })
if not job then return { 'NOT_FOUND' } end
if job.state ~= 'FAILED' and job.state ~= 'CANCELLED' then
  return { 'FAILED_PRECONDITION', 'only FAILED or CANCELLED jobs can be retried; job is ' .. job.state }
end
local attempt = tonumber(job.attempt)
job.attempt = attempt + 1
redis.call('HSET', jkey(id), 'attempt', job.attempt, 'retry_base', attempt, 'cancel_requested', 0, 'run_at', now)
redis.call('HDEL', jkey(id), 'finished_at', 'result', 'done_lease', 'done_kind', 'cancel_reason')
enqueue(job, now)
return reply('OK', id)
