-- create: (new) -> QUEUED, or SCHEDULED when run_at is in the future, for one job or a whole
-- batch (CreateJob, CreateJobs) in one atomic step; create_job in lib.lua does each job.
-- With an idempotency key whose window is open and whose job exists: no change, reply EXISTS.
-- ARGV: now, then 15 arguments per job: id, queue, type, payload, max_attempts, b_initial,
--       b_max, b_mult, b_jitter, timeout, run_at, idem_key, idem_ttl_ms, labels, traceparent
-- Reply: one array per job, in order: OK (the caller knows the record it wrote) | EXISTS, then
-- the existing record.
local now, n = ARGV[1], (#ARGV - 1) / 15
local out = {}
for i = 0, n - 1 do
  local a = {}
  for k = 1, 15 do a[k] = ARGV[1 + i * 15 + k] end
  local status, id = create_job(a, now)
  out[i + 1] = item_reply(status, id, nil, status == 'EXISTS')
end
return out
