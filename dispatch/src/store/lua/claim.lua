-- claim: QUEUED -> RUNNING, only for the attempt named in the run message; grants a lease
-- (claim_job in lib.lua).
-- ARGV: id, attempt, worker_id, lease_id, lease deadline (ms since the epoch), now
-- Reply: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local status, reason = claim_job(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
return item_reply(status, ARGV[1], reason, true)
