-- claim: QUEUED -> RUNNING, only for the attempt named in the run message, with a lease; for
-- one claim or a whole batch of one partition (ClaimJob, ClaimJobs) in one step, each granted
-- or refused on its own by claim_job in lib.lua.
-- KEYS: the partition's (lib.lua), then per claim: record, payload
-- ARGV: retention, then 5 arguments per claim: id, attempt, worker_id, lease_id, lease_ms
-- Reply: one array per claim, in order: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local now = clock()
local out = {}
for i = 0, (#ARGV - 1) / 5 - 1 do
  local b, kb = 1 + i * 5, HEADER + i * 2
  local rk, pk = KEYS[kb + 1], KEYS[kb + 2]
  local status, reason = claim_job(rk, ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], now)
  out[i + 1] = item_reply(status, reason, rk, pk)
end
return out
