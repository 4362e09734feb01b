-- complete: RUNNING (same lease) -> SUCCEEDED (complete_job in lib.lua). The same report
-- again is a no-op (OK); any other lease gets FAILED_PRECONDITION and changes nothing.
-- KEYS: the partition's (lib.lua), record, payload
-- ARGV: retention, id, lease_id, result
-- Reply: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local rk, pk = KEYS[HEADER + 1], KEYS[HEADER + 2]
local status, reason = complete_job(rk, ARGV[2], ARGV[3], ARGV[4], clock())
return item_reply(status, reason, rk, pk)
