-- promote (scheduler): due SCHEDULED -> QUEUED, at most `limit` jobs per call.
-- ARGV: now, limit
-- Reply: number of jobs promoted.
local now, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', P .. 'scheduled', '-inf', now, 'LIMIT', 0, limit)
local n = 0
for _, id in ipairs(ids) do
  local job = load(id, { 'queue', 'type', 'attempt', 'traceparent' })
  if job and job.state == 'SCHEDULED' then
    enqueue(job, now)
    n = n + 1
  else
    redis.call('ZREM', P .. 'scheduled', id)
  end
end
return n
