-- complete_many: complete.lua for a whole batch of one partition in one step (CompleteJobs);
-- each report is recorded or refused on its own. Replies carry what metrics need, not the
-- record.
-- KEYS: the partition's (lib.lua), then per report: record
-- ARGV: retention, then 3 arguments per report: id, lease_id, result
-- Reply: one array per report, in order: OK, fresh (1 when recorded now, 0 for a repeat),
-- queue, type, started_at, attempt | NOT_FOUND | FAILED_PRECONDITION, reason.
local now = clock()
local out = {}
for i = 0, (#ARGV - 1) / 3 - 1 do
  local b = 1 + i * 3
  local status, reason, job = complete_job(KEYS[HEADER + 1 + i], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], now)
  if status == 'OK' then
    out[i + 1] = { 'OK', job.fresh and '1' or '0', job.queue, job.type, job.started_at or '', job.attempt }
  else
    out[i + 1] = item_reply(status, reason)
  end
end
return out
