-- claim: QUEUED -> RUNNING, only for the attempt named in the run message, with a lease; for
-- one claim or a whole batch (ClaimJob, ClaimJobs) in one step, each granted or refused on its
-- own by claim_job in lib.lua.
-- ARGV: now, then 5 arguments per claim: id, attempt, worker_id, lease_id, lease deadline (ms)
-- Reply: one array per claim, in order: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local now = ARGV[1]
local out = {}
for i = 0, (#ARGV - 1) / 5 - 1 do
  local b = 1 + i * 5
  local status, reason = claim_job(ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5], now)
  out[i + 1] = item_reply(status, ARGV[b + 1], reason, true)
end
return out
