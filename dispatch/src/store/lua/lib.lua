-- Shared helpers, prepended to every script at load time (see store/scripts.rs).
--
-- Keys (all under the "dispatch:" prefix):
--   job:<id>             HASH   the job record
--   job:<id>:events      STREAM the job's transitions, read by WatchJob
--   scheduled            ZSET   SCHEDULED job ids by run_at (ms)
--   queued               ZSET   QUEUED job ids by when their run message was last written (ms)
--   leases               ZSET   RUNNING job ids by lease deadline (ms)
--   idx:<queue>:<STATE>  ZSET   job ids per queue and state (score 0, ordered by id = time)
--   queues               SET    every queue name seen
--   idem:<queue>:<key>   STRING job id for an idempotency key, with the window as TTL
--   outbox               STREAM messages waiting to be published to NATS by the relay
-- Channel "dispatch:watch" carries the id of every job that changed, to wake WatchJob.
local P = 'dispatch:'

local function jkey(id) return P .. 'job:' .. id end
local function idx(queue, state) return P .. 'idx:' .. queue .. ':' .. state end

-- Reads named fields of a job into a table; nil when the job does not exist.
local function load(id, fields)
  local vals = redis.call('HMGET', jkey(id), 'state', unpack(fields))
  if not vals[1] then return nil end
  local job = { id = id, state = vals[1] }
  for i, f in ipairs(fields) do job[f] = vals[i + 1] end
  return job
end

-- Moves a job to another state: record and per-queue index.
local function set_state(job, new, now)
  if job.state ~= new then
    redis.call('ZREM', idx(job.queue, job.state), job.id)
    redis.call('ZADD', idx(job.queue, new), 0, job.id)
  end
  job.state = new
  redis.call('HSET', jkey(job.id), 'state', new, 'updated_at', now)
end

-- Appends a message for NATS to the outbox. kind: run|processing|complete|failed|cancelled.
local function outbox(job, kind, attempt, now, worker_id, err, seq, msg_suffix)
  redis.call('XADD', P .. 'outbox', '*',
    'kind', kind, 'id', job.id, 'queue', job.queue, 'type', job.type,
    'attempt', attempt, 'state', job.state, 'worker_id', worker_id or '', 'ts', now,
    'error', err or '', 'seq', seq or 0, 'tp', job.traceparent or '', 'sfx', msg_suffix or '')
end

-- Records a transition: the job's history stream, the outbox (kind may be nil), and a wake-up
-- for watchers.
local function emit(job, kind, attempt, now, worker_id, err)
  local seq = redis.call('HINCRBY', jkey(job.id), 'seq', 1)
  redis.call('XADD', jkey(job.id) .. ':events', 'MAXLEN', '~', 256, '*',
    'seq', seq, 'state', job.state, 'attempt', attempt, 'worker_id', worker_id or '',
    'ts', now, 'error', err or '')
  if kind then outbox(job, kind, attempt, now, worker_id, err, seq) end
  redis.call('PUBLISH', P .. 'watch', job.id)
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
  table.insert(r, 1, status)
  return r
end
