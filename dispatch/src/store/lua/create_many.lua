-- create_many: create.lua for a whole batch in one step (CreateJobs).
-- ARGV: now, then 15 arguments per job as in create.lua (id ... traceparent).
-- Reply: one array per job, in order: OK | EXISTS, then the existing record.
local now, n = ARGV[1], (#ARGV - 1) / 15
local out = {}
for i = 0, n - 1 do
  local a = {}
  for k = 1, 15 do a[k] = ARGV[1 + i * 15 + k] end
  local status, id = create_job(a, now)
  out[i + 1] = item_reply(status, id, nil, status == 'EXISTS')
end
return out
