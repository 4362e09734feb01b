-- sweep (sweeper): QUEUED jobs whose run message the run stream lacks get it written again;
-- no state change. The caller names jobs of a queue whose stream holds fewer run messages
-- than the queue has QUEUED jobs, with the attempts the stream holds for each. A job is left
-- alone when the stream holds its attempt, when it was queued (or swept) less than age_ms
-- ago, or when its run message may have been published while the caller read the stream
-- (queued at or after `floor`), or when its queue is paused (its claims are refused, so a
-- worker that took the message dropped it: resuming writes it again).
-- KEYS: the partition's (lib.lua), then per job: record
-- ARGV: retention, age_ms, floor, then per job: id, attempts in the stream (",1,2," or ",")
--   floor: Redis's time (ms) when the caller began reading the stream, or the time of the
--   oldest entry this partition's outbox held then if older. Entries written since are newer,
--   so a job whose message may still be in the outbox is past the floor too.
-- Reply: number of run messages written again.
local now = clock()
local cutoff = tonumber(now) - tonumber(ARGV[2])
if tonumber(ARGV[3]) - 1 < cutoff then cutoff = tonumber(ARGV[3]) - 1 end
local n = 0
for i = 0, (#ARGV - 3) / 2 - 1 do
  local id, present = ARGV[4 + i * 2], ARGV[5 + i * 2]
  local rk = KEYS[HEADER + 1 + i]
  local job = load(rk, id, { 'type', 'attempt', 'traceparent', 'updated_at', 'swept_at' })
  if job and job.state == 'QUEUED' and not string.find(present, ',' .. job.attempt .. ',', 1, true)
      and tonumber(job.swept_at or job.updated_at) <= cutoff
      and redis.call('SISMEMBER', PAUSED, job.queue) == 0 then
    local sweeps = redis.call('HINCRBY', rk, 'sweeps', 1)
    redis.call('HSET', rk, 'swept_at', now)
    outbox(job, 'run', job.attempt, now, nil, nil, 0, ':s' .. sweeps)
    n = n + 1
  end
end
return n
