-- fail: RUNNING (same lease) -> SCHEDULED/QUEUED (retry), FAILED, or CANCELLED (see
-- fail_attempt in lib.lua). The same report again is a no-op (OK); any other lease gets
-- FAILED_PRECONDITION and changes nothing.
-- ARGV: id, lease_id, error, retryable (0/1), delay_ms (-1: backoff policy), jitter r, now
-- Reply: OK + record | NOT_FOUND | FAILED_PRECONDITION, reason.
local id, lease_id, now = ARGV[1], ARGV[2], tonumber(ARGV[7])
local fields = { 'lease_id', 'done_lease', 'done_kind' }
for _, f in ipairs(FAIL_FIELDS) do table.insert(fields, f) end
local job = load(id, fields)
if not job then return { 'NOT_FOUND' } end
if job.state == 'RUNNING' and job.lease_id == lease_id then
  redis.call('HSET', jkey(id), 'done_lease', lease_id, 'done_kind', 'fail')
  fail_attempt(job, ARGV[3], ARGV[4] == '1', tonumber(ARGV[5]), tonumber(ARGV[6]), now)
  return reply('OK', id)
end
if job.done_lease == lease_id and job.done_kind == 'fail' then return reply('OK', id) end
return { 'FAILED_PRECONDITION', 'lease ' .. lease_id .. ' is not held (job is ' .. job.state .. ')' }
