-- retry: FAILED|CANCELLED -> QUEUED on a new attempt, with a fresh budget of max_attempts
-- (and no expiry any more).
-- KEYS: the partition's (lib.lua), record, payload
-- ARGV: retention, id
-- Reply: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local rk, pk, id = KEYS[HEADER + 1], KEYS[HEADER + 2], ARGV[2]
local job = load(rk, id, { 'type', 'attempt', 'traceparent' })
if not job then return { 'NOT_FOUND' } end
if job.state ~= 'FAILED' and job.state ~= 'CANCELLED' then
  return { 'FAILED_PRECONDITION', 'only FAILED or CANCELLED jobs can be retried; job is ' .. job.state }
end
local now = clock()
local attempt = tonumber(job.attempt)
job.attempt = tostring(attempt + 1)
redis.call('HSET', rk, 'attempt', job.attempt, 'retry_base', attempt, 'run_at', now)
redis.call('HDEL', rk, 'finished_at', 'result', 'done_lease', 'done_kind', 'cancel_reason', 'cancel_requested')
enqueue(job, now)
return reply('OK', rk, pk)
