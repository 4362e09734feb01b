-- complete: RUNNING (same lease) -> SUCCEEDED (complete_job in lib.lua). The same report
-- again is a no-op (OK); any other lease gets FAILED_PRECONDITION and changes nothing.
-- ARGV: id, lease_id, result, now
-- Reply: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local status, reason = complete_job(ARGV[1], ARGV[2], ARGV[3], ARGV[4])
return item_reply(status, ARGV[1], reason, true)
