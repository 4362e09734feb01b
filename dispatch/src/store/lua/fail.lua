-- fail: RUNNING (same lease) -> SCHEDULED/QUEUED (retry), FAILED, or CANCELLED (see
-- fail_attempt in lib.lua). The same report again is a no-op (OK); any other lease gets
-- FAILED_PRECONDITION and changes nothing.
-- KEYS: the partition's (lib.lua), record, payload
-- ARGV: retention, id, lease_id, error, retryable (0/1), delay_ms (-1: backoff policy), jitter r
-- Reply: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local rk, pk = KEYS[HEADER + 1], KEYS[HEADER + 2]
local id, lease_id = ARGV[2], ARGV[3]
local fields = { 'lease_id', 'done_lease', 'done_kind' }
for _, f in ipairs(FAIL_FIELDS) do table.insert(fields, f) end
local job = load(rk, id, fields)
if not job then return { 'NOT_FOUND' } end
if job.state == 'RUNNING' and job.lease_id == lease_id then
  put(job, 'done_lease', lease_id)
  put(job, 'done_kind', 'fail')
  fail_attempt(job, ARGV[4], ARGV[5] == '1', tonumber(ARGV[6]), tonumber(ARGV[7]), clock())
  return reply('OK', rk, pk)
end
if job.done_lease == lease_id and job.done_kind == 'fail' then return reply('OK', rk, pk) end
return { 'FAILED_PRECONDITION', 'lease ' .. lease_id .. ' is not held (job is ' .. job.state .. ')' }
