-- reap (lease reaper): RUNNING with an expired lease -> a failed attempt ("lease expired"),
-- retried with backoff, FAILED when exhausted, CANCELLED when cancellation was requested.
-- ARGV: now, limit, r (jitter seed in [0,1))
-- Reply: number of leases reaped.
local now, limit, r = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now, 'LIMIT', 0, limit)
local n = 0
for i, id in ipairs(ids) do
  local job = load(id, FAIL_FIELDS)
  if job and job.state == 'RUNNING' then
    local jitter = (r + i * 0.6180339887) % 1
    fail_attempt(job, 'lease expired (worker ' .. (job.worker_id or '?') .. ')', true, -1, jitter, now)
    n = n + 1
  else
    redis.call('ZREM', P .. 'leases', id)
  end
end
return n
