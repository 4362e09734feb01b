-- sweep (sweeper): QUEUED jobs whose run message was written more than age_ms ago get it
-- written again (the message may have been lost); no state change. Claims of duplicates are
-- refused, so a spare message costs one refused claim.
-- ARGV: now, age_ms, limit
-- Reply: number of run messages re-written.
local now, age, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', P .. 'queued', '-inf', now - age, 'LIMIT', 0, limit)
local n = 0
for _, id in ipairs(ids) do
  local job = load(id, { 'queue', 'type', 'attempt', 'traceparent' })
  if job and job.state == 'QUEUED' then
    local sweeps = redis.call('HINCRBY', jkey(id), 'sweeps', 1)
    redis.call('ZADD', P .. 'queued', now, id)
    outbox(job, 'run', job.attempt, now, nil, nil, 0, ':s' .. sweeps)
    n = n + 1
  else
    redis.call('ZREM', P .. 'queued', id)
  end
end
return n
