-- tick (timers loop): for each job whose timer is still due (checked again here):
--   SCHEDULED -> QUEUED with a run message (scheduler);
--   RUNNING (lease expired) -> a failed attempt "lease expired": retried with backoff, FAILED
--     when exhausted, CANCELLED when cancellation was requested (reaper);
--   SUCCEEDED|FAILED|CANCELLED past retention -> deleted: record, payload, history, index
--     entries, timer and idempotency key; a queue left with no job in this partition leaves
--     its queue set (retention).
-- Safe with many dispatch replicas: a job no longer due, or gone, is skipped.
-- KEYS: the partition's (lib.lua), then per job: record, payload, idempotency key (or the
--       record key again when it has none)
-- ARGV: retention, jitter seed r in [0,1), then the ids
-- Reply: promoted, reaped, expired.
local now = clock()
local n_now, r = tonumber(now), tonumber(ARGV[2])
local promoted, reaped, expired = 0, 0, 0
local emptied = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local kb = HEADER + (i - 3) * 3
  local rk, pk, ik = KEYS[kb + 1], KEYS[kb + 2], KEYS[kb + 3]
  local due = redis.call('ZSCORE', TIMERS, id)
  if due and tonumber(due) <= n_now then
    local job = load(rk, id, FAIL_FIELDS)
    if not job then
      zrem(TIMERS, id)
    elseif job.state == 'SCHEDULED' then
      enqueue(job, now)
      promoted = promoted + 1
    elseif job.state == 'RUNNING' then
      local jitter = (r + i * 0.6180339887) % 1
      fail_attempt(job, 'lease expired (worker ' .. (job.worker_id or '?') .. ')', true, -1, jitter, now)
      reaped = reaped + 1
    elseif job.state == 'QUEUED' then
      zrem(TIMERS, id)
    else
      zrem(IDX[job.state], member(job))
      zrem(TIMERS, id)
      if ik ~= rk and redis.call('GET', ik) == id then redis.call('DEL', ik) end
      redis.call('DEL', rk, pk)
      emptied[job.queue] = true
      expired = expired + 1
    end
  end
end
-- The indexes are read below: apply this run's writes to them first.
flush_writes()
for queue in pairs(emptied) do
  local left = 0
  for _, k in pairs(IDX) do left = left + redis.call('ZLEXCOUNT', k, '[' .. queue .. ':', '(' .. queue .. ';') end
  if left == 0 then redis.call('SREM', QUEUES, queue) end
end
return { promoted, reaped, expired }
