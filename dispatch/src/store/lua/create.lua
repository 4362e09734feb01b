-- create: (new) -> QUEUED, or SCHEDULED when its run time is in the future, for one job or a
-- whole batch of one partition (CreateJob, CreateJobs) in one atomic step; create_job in
-- lib.lua does each job. With an idempotency key whose window is open: no change, EXISTS.
-- KEYS: the partition's (lib.lua), then per job: record, payload, idempotency key
-- ARGV: retention, then 14 arguments per job: id, queue, type, payload, max_attempts,
--       backoff "initial|max|mult|jitter", timeout, run_at ('' for now + delay), idem_key,
--       idem_ttl_ms, labels, traceparent, retention override ('' for none), delay_ms
-- Reply: one array per job, in order: OK, now (the caller knows the record it wrote) |
-- EXISTS, id of the existing job.
local now = clock()
local out = {}
for i = 0, (#ARGV - 1) / 14 - 1 do
  local a = {}
  for k = 1, 14 do a[k] = ARGV[1 + i * 14 + k] end
  local kb = HEADER + i * 3
  local status, id = create_job(KEYS[kb + 1], KEYS[kb + 2], KEYS[kb + 3], a, now)
  if status == 'OK' then out[i + 1] = { 'OK', now } else out[i + 1] = { status, id } end
end
return out
