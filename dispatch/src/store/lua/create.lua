-- create: (new) -> QUEUED, or SCHEDULED when run_at is in the future (create_job in lib.lua).
-- With an idempotency key whose window is open and whose job exists: no change, reply EXISTS.
-- ARGV: id, queue, type, payload, max_attempts, b_initial, b_max, b_mult, b_jitter, timeout,
--       run_at, idem_key, idem_ttl_ms, labels, traceparent, now
-- Reply: OK (the caller knows the record it wrote) | EXISTS, then the existing record.
local status, id = create_job(ARGV, ARGV[16])
return item_reply(status, id, nil, status == 'EXISTS')
