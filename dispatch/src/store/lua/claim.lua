-- claim: QUEUED -> RUNNING, only for the attempt named in the run message, with a lease; for
-- one claim or a whole batch of one partition (ClaimJob, ClaimJobs) in one step, each granted
-- or refused on its own by claim_job in lib.lua.
-- KEYS: the partition's (lib.lua), then per claim: record, payload
-- ARGV: retention, then 5 arguments per claim: id, attempt, worker_id, lease_id, lease_ms
-- Reply: one array per claim, in order: FAILED_PRECONDITION, reason | NOT_FOUND | a granted
-- claim's record, positionally (the caller knows the id, worker and lease it sent):
--   OK, now (updated_at = started_at), lease_deadline, queue, type, attempt, max_attempts,
--   retry_base, b, timeout, run_at, idem_key, labels, traceparent, created_at, error,
--   error_retryable, error_attempt, payload
-- with '' for a field the record does not hold.
local now = clock()
local out, granted, pks = {}, {}, {}
for i = 0, (#ARGV - 1) / 5 - 1 do
  local b, kb = 1 + i * 5, HEADER + i * 2
  local rk, pk = KEYS[kb + 1], KEYS[kb + 2]
  local status, r = claim_job(rk, ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], now)
  if status == 'OK' then
    out[i + 1] = r
    granted[#granted + 1] = r
    pks[#pks + 1] = pk
  else
    out[i + 1] = item_reply(status, r)
  end
end
-- The payloads of the granted claims in one read.
if #pks > 0 then
  local payloads = redis.call('MGET', unpack(pks))
  for i, r in ipairs(granted) do r[#r + 1] = payloads[i] or '' end
end
return out
