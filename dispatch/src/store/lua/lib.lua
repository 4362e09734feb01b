-- Shared helpers, prepended to every script at load time (see store/scripts.rs).
--
-- Keys (all under the "dispatch:" prefix):
--   job:<id>             HASH   the job record, and its history: field h<seq> per transition,
--                               "state|attempt|worker_id|ts|error", the last HISTORY kept
--   job:<id>:p           STRING the job's payload (kept out of the hash so that the hash keeps
--                               Redis's compact listpack encoding: values of at most 64 bytes)
--   scheduled            ZSET   SCHEDULED job ids by run_at (ms)
--   queued               ZSET   QUEUED job ids by when their run message was last written (ms)
--   leases               ZSET   RUNNING job ids by lease deadline (ms)
--   idx:<queue>:<STATE>  ZSET   job ids per queue and state (score 0, ordered by id = time)
--   queues               SET    every queue name seen
--   idem:<queue>:<key>   STRING job id for an idempotency key, with the window as TTL
--   outbox               STREAM messages waiting to be published to NATS by the relay
-- Channel "dispatch:watch:<id>" announces each change of job <id>, to wake its WatchJob streams
-- (a publish nobody listens to costs next to nothing).
local P = 'dispatch:'
-- History entries kept per job.
local HISTORY = 100

local function jkey(id) return P .. 'job:' .. id end
local function idx(queue, state) return P .. 'idx:' .. queue .. ':' .. state end

-- Reads named fields of a job (and always its state and seq) into a table; nil when the job
-- does not exist.
local function load(id, fields)
  local vals = redis.call('HMGET', jkey(id), 'state', 'seq', unpack(fields))
  if not vals[1] then return nil end
  local job = { id = id, state = vals[1], seq = tonumber(vals[2]) or 0 }
  for i, f in ipairs(fields) do job[f] = vals[i + 2] end
  return job
end

-- Buffers a field write of the job's record; emit() writes them all with one HSET.
local function put(job, field, value)
  local w = job.w
  if not w then
    w = {}
    job.w = w
  end
  w[#w + 1] = field
  w[#w + 1] = value
end

-- Moves a job to another state: per-queue index now, record fields at the next emit().
local function set_state(job, new, now)
  if job.state ~= new then
    redis.call('ZREM', idx(job.queue, job.state), job.id)
    redis.call('ZADD', idx(job.queue, new), '0', job.id)
  end
  job.state = new
  put(job, 'state', new)
  put(job, 'updated_at', now)
end

-- Appends a message for NATS to the outbox. kind: run|processing|complete|failed|cancelled.
-- One field, a JSON array (cjson is Redis's built-in C encoder): the relay decodes it.
local function outbox(job, kind, attempt, now, worker_id, err, seq, msg_suffix)
  redis.call('XADD', P .. 'outbox', '*', 'm', cjson.encode({
    kind, job.id, job.queue, job.type, tostring(attempt), job.state, worker_id or '', tostring(now),
    err or '', tostring(seq or 0), job.traceparent or '', msg_suffix or '' }))
end

-- Records a transition: the buffered field writes and the history entry in one HSET, the
-- outbox (kind may be nil), and a wake-up for the job's watchers (none for a new job).
--
-- Speed: `now` and `attempt` travel as the strings they arrived as where possible; Lua turns a
-- number into a string with sprintf, which was a tenth of Redis's time per job.
local function emit(job, kind, attempt, now, worker_id, err)
  local k = jkey(job.id)
  local seq = job.seq + 1
  job.seq = seq
  local s = tostring(seq)
  put(job, 'seq', s)
  put(job, 'h' .. s, job.state .. '|' .. attempt .. '|' .. (worker_id or '') .. '|' .. now .. '|' .. (err or ''))
  redis.call('HSET', k, unpack(job.w))
  job.w = nil
  if seq > HISTORY then redis.call('HDEL', k, 'h' .. (seq - HISTORY)) end
  if kind then outbox(job, kind, attempt, now, worker_id, err, s) end
  if seq > 1 then redis.call('PUBLISH', P .. 'watch:' .. job.id, s) end
end

-- Puts a job on the run queue for its current attempt.
local function enqueue(job, now)
  set_state(job, 'QUEUED', now)
  redis.call('ZREM', P .. 'scheduled', job.id)
  redis.call('ZADD', P .. 'queued', now, job.id)
  emit(job, 'run', job.attempt, now)
end

-- Backoff delay in ms before attempt n+1 after n failed attempts, with jitter r in [0,1).
local function backoff(job, n, r)
  local d = tonumber(job.b_initial) * (tonumber(job.b_mult) ^ (n - 1))
  local max = tonumber(job.b_max)
  if d > max then d = max end
  local j = tonumber(job.b_jitter)
  return math.floor(d * (1 + j * (2 * r - 1)))
end

-- Fields a failed attempt needs (see fail_attempt).
local FAIL_FIELDS = { 'queue', 'type', 'attempt', 'max_attempts', 'retry_base', 'cancel_requested',
  'b_initial', 'b_max', 'b_mult', 'b_jitter', 'worker_id', 'traceparent', 'cancel_reason' }

-- Ends the current attempt of a RUNNING job as failed: CANCELLED when cancellation was
-- requested, SCHEDULED (or QUEUED when delay is 0) while attempts are left and the error is
-- retryable, else FAILED. delay < 0 means "use the backoff policy".
local function fail_attempt(job, err, retryable, delay, r, now)
  local k = jkey(job.id)
  local attempt = tonumber(job.attempt)
  redis.call('ZREM', P .. 'leases', job.id)
  redis.call('HDEL', k, 'lease_id', 'lease_deadline')
  redis.call('HSET', k, 'error', err, 'error_retryable', retryable and 1 or 0, 'error_attempt', attempt)
  if job.cancel_requested == '1' then
    err = job.cancel_reason or err
    redis.call('HSET', k, 'error', err, 'error_retryable', 0)
    set_state(job, 'CANCELLED', now)
    redis.call('HSET', k, 'finished_at', now)
    emit(job, 'cancelled', attempt, now, job.worker_id, err)
  elseif retryable and (attempt - tonumber(job.retry_base)) < tonumber(job.max_attempts) then
    if delay < 0 then delay = backoff(job, attempt - tonumber(job.retry_base), r) end
    set_state(job, 'SCHEDULED', now)
    redis.call('HSET', k, 'run_at', now + delay)
    emit(job, 'failed', attempt, now, job.worker_id, err)
    job.attempt = attempt + 1
    redis.call('HSET', k, 'attempt', job.attempt)
    if delay <= 0 then
      enqueue(job, now)
    else
      redis.call('ZADD', P .. 'scheduled', now + delay, job.id)
    end
  else
    set_state(job, 'FAILED', now)
    redis.call('HSET', k, 'finished_at', now)
    emit(job, 'failed', attempt, now, job.worker_id, err)
  end
end

-- The reply of most scripts: a status word, then the whole record as field/value pairs.
local function reply(status, id)
  local r = redis.call('HGETALL', jkey(id))
  local payload = redis.call('GET', jkey(id) .. ':p')
  if payload then
    table.insert(r, 'payload')
    table.insert(r, payload)
  end
  table.insert(r, 1, status)
  return r
end

-- Queues already added to the queue set by this script run.
local seen_queues = {}

-- Creates one job from the 15 arguments a[1..15] of create.lua, at `now`.
-- Returns 'OK' or 'EXISTS', and the id of the job (the existing one for 'EXISTS').
local function create_job(a, now)
  local id, queue = a[1], a[2]
  local run_at, idem_key = a[11], a[12]
  if idem_key ~= '' then
    local ik = P .. 'idem:' .. queue .. ':' .. idem_key
    local existing = redis.call('GET', ik)
    if existing and redis.call('EXISTS', jkey(existing)) == 1 then
      return 'EXISTS', existing
    end
    redis.call('SET', ik, id, 'PX', a[13])
  end
  local state, later = 'QUEUED', tonumber(run_at) > tonumber(now)
  if later then state = 'SCHEDULED' else run_at = now end
  redis.call('SET', jkey(id) .. ':p', a[4])
  local job = { id = id, queue = queue, type = a[3], state = state, attempt = 1, traceparent = a[15], seq = 0,
    w = { 'id', id, 'queue', queue, 'type', a[3],
      'state', state, 'attempt', '1', 'max_attempts', a[5], 'retry_base', '0',
      'b_initial', a[6], 'b_max', a[7], 'b_mult', a[8], 'b_jitter', a[9],
      'timeout', a[10], 'run_at', run_at, 'idem_key', idem_key, 'labels', a[14],
      'traceparent', a[15], 'cancel_requested', '0', 'created_at', now, 'updated_at', now } }
  if not seen_queues[queue] then
    redis.call('SADD', P .. 'queues', queue)
    seen_queues[queue] = true
  end
  redis.call('ZADD', idx(queue, state), '0', id)
  if later then
    redis.call('ZADD', P .. 'scheduled', run_at, id)
    emit(job, nil, '1', now)
  else
    redis.call('ZADD', P .. 'queued', now, id)
    emit(job, 'run', '1', now)
  end
  return 'OK', id
end

-- QUEUED -> RUNNING for `attempt` (a string, as in the run message), with a lease until
-- `deadline` (ms since the epoch).
-- Returns 'OK', or 'NOT_FOUND', or 'FAILED_PRECONDITION' and the reason.
local function claim_job(id, attempt, worker_id, lease_id, deadline, now)
  local job = load(id, { 'queue', 'type', 'attempt', 'traceparent' })
  if not job then return 'NOT_FOUND' end
  if job.state ~= 'QUEUED' or job.attempt ~= attempt then
    return 'FAILED_PRECONDITION', 'job is ' .. job.state .. ' on attempt ' .. job.attempt
  end
  set_state(job, 'RUNNING', now)
  put(job, 'worker_id', worker_id)
  put(job, 'lease_id', lease_id)
  put(job, 'lease_deadline', deadline)
  put(job, 'started_at', now)
  -- Only an earlier attempt can have left progress behind.
  if attempt ~= '1' then redis.call('HDEL', jkey(id), 'progress') end
  redis.call('ZREM', P .. 'queued', id)
  redis.call('ZADD', P .. 'leases', deadline, id)
  emit(job, 'processing', attempt, now, worker_id)
  return 'OK'
end

-- RUNNING (same lease) -> SUCCEEDED with `result`. The same report again is a no-op ('OK');
-- any other lease gets 'FAILED_PRECONDITION' and the reason, and changes nothing.
-- Returns the status, the reason of a refusal, and on 'OK' the job's fields (queue, type,
-- started_at) with `fresh` true when this call recorded the success.
local function complete_job(id, lease_id, result, now)
  local job = load(id, { 'lease_id', 'done_lease', 'done_kind', 'queue', 'type', 'attempt', 'worker_id',
    'traceparent', 'started_at' })
  if not job then return 'NOT_FOUND' end
  if job.state == 'RUNNING' and job.lease_id == lease_id then
    set_state(job, 'SUCCEEDED', now)
    put(job, 'result', result)
    put(job, 'finished_at', now)
    put(job, 'done_lease', lease_id)
    put(job, 'done_kind', 'complete')
    redis.call('HDEL', jkey(id), 'lease_id', 'lease_deadline')
    redis.call('ZREM', P .. 'leases', id)
    emit(job, 'complete', job.attempt, now, job.worker_id)
    job.fresh = true
    return 'OK', nil, job
  end
  if job.done_lease == lease_id and job.done_kind == 'complete' then return 'OK', nil, job end
  return 'FAILED_PRECONDITION', 'lease ' .. lease_id .. ' is not held (job is ' .. job.state .. ')'
end

-- The reply of one item: the record after 'OK'/'EXISTS' when `full`, else the bare status;
-- a refusal with its reason.
local function item_reply(status, id, reason, full)
  if status == 'OK' or status == 'EXISTS' then
    if full then return reply(status, id) end
    return { status }
  end
  if reason then return { status, reason } end
  return { status }
end

