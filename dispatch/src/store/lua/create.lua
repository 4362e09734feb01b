-- create: (new) -> QUEUED, or SCHEDULED when run_at is in the future.
-- With an idempotency key whose window is open and whose job exists: no change, reply EXISTS.
-- ARGV: id, queue, type, payload, max_attempts, b_initial, b_max, b_mult, b_jitter, timeout,
--       run_at, idem_key, idem_ttl_ms, labels, traceparent, now
-- Reply: OK|EXISTS, then the record.
local id, queue = ARGV[1], ARGV[2]
local run_at, idem_key, now = tonumber(ARGV[11]), ARGV[12], tonumber(ARGV[16])
if idem_key ~= '' then
  local ik = P .. 'idem:' .. queue .. ':' .. idem_key
  local existing = redis.call('GET', ik)
  if existing and redis.call('EXISTS', jkey(existing)) == 1 then
    return reply('EXISTS', existing)
  end
  redis.call('SET', ik, id, 'PX', ARGV[13])
end
redis.call('HSET', jkey(id), 'id', id, 'queue', queue, 'type', ARGV[3], 'payload', ARGV[4],
  'state', 'NEW', 'attempt', 1, 'max_attempts', ARGV[5], 'retry_base', 0,
  'b_initial', ARGV[6], 'b_max', ARGV[7], 'b_mult', ARGV[8], 'b_jitter', ARGV[9],
  'timeout', ARGV[10], 'run_at', math.max(run_at, now), 'idem_key', idem_key, 'labels', ARGV[14],
  'traceparent', ARGV[15], 'cancel_requested', 0, 'created_at', now, 'updated_at', now, 'seq', 0)
redis.call('SADD', P .. 'queues', queue)
local job = { id = id, queue = queue, type = ARGV[3], state = 'NEW', attempt = 1, traceparent = ARGV[15] }
if run_at > now then
  redis.call('ZADD', idx(queue, 'SCHEDULED'), 0, id)
  job.state = 'SCHEDULED'
  redis.call('HSET', jkey(id), 'state', 'SCHEDULED')
  redis.call('ZADD', P .. 'scheduled', run_at, id)
  emit(job, nil, 1, now)
else
  redis.call('ZADD', idx(queue, 'QUEUED'), 0, id)
  job.state = 'QUEUED'
  redis.call('HSET', jkey(id), 'state', 'QUEUED')
  redis.call('ZADD', P .. 'queued', now, id)
  emit(job, 'run', 1, now)
end
return reply('OK', id)
