-- Shared helpers, prepended to every script at load time (see Scripts in store/mod.rs).
--
-- Every script works inside one partition and is handed every key it touches (Redis Cluster
-- needs that; all of a partition's keys share its hash tag, "{p7}" below):
--   KEYS[1]    dispatch:{p7}:timers        ZSET   SCHEDULED ids by run_at, RUNNING ids by lease
--                                                 deadline, finished ids by expiry (ms)
--   KEYS[2..7] dispatch:{p7}:idx:<STATE>   ZSET   "<queue>:<id>" of the jobs in that state, score 0
--                                                 (by queue, then id, which is time-ordered)
--   KEYS[8]    dispatch:{p7}:outbox        STREAM messages waiting for the relay to publish
--   KEYS[9]    dispatch:{p7}:queues        SET    queues with jobs in this partition
--   KEYS[10]   dispatch:{p7}:paused        SET    paused queues (the same in every partition)
--   KEYS[11]   dispatch:{p7}:watchers      STRING WatchJob streams following jobs of this partition
--   then per job, as each script says:
--              dispatch:{p7}:job:<id>      HASH   the record, and its history: field h<seq> per
--                                                 transition, "state|attempt|worker_id|ts|error",
--                                                 the last HISTORY kept
--              dispatch:{p7}:job:<id>:p    STRING the payload (kept out of the hash so that the
--                                                 hash keeps Redis's compact listpack encoding)
--              dispatch:{p7}:idem:<q>:<k>  STRING job id of an idempotency key (TTL: the window)
-- ARGV[1] of every script: the default retention of finished jobs in ms,
-- "succeeded|failed|cancelled"; a job's own `ret` field overrides it. When it ends with
-- "|<consumer>", the caller publishes the outbox entries the script writes itself (prompt
-- publishing, see delivered() below): they are read into that relay consumer's pending list in
-- the same step and returned with the reply.
--
-- Time is Redis's (TIME), never the caller's: leases, schedules and expiry do not depend on
-- which dispatch replica's clock is right.
--
-- Fields left at their default are not stored (retry_base 0, cancel_requested 0, empty
-- idem_key, labels, traceparent): each field costs memory in every record.
-- A change to a job is announced on the channel named like its record key, to wake WatchJob,
-- while anyone watches a job of the partition (KEYS[11] above zero; read once per call).
local TIMERS, OUTBOX, QUEUES, PAUSED, WATCHERS = KEYS[1], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local IDX = { SCHEDULED = KEYS[2], QUEUED = KEYS[3], RUNNING = KEYS[4], SUCCEEDED = KEYS[5], FAILED = KEYS[6],
  CANCELLED = KEYS[7] }
local HEADER = 11
local RETENTION = ARGV[1]
-- The default retention, parsed once per call ("succeeded|failed|cancelled" ms).
local RET_S, RET_F, RET_C, CONSUMER = string.match(RETENTION, '^(%d+)|(%d+)|(%d+)|?(.*)$')
-- History entries kept per job.
local HISTORY = 100

-- Whether any WatchJob follows a job of this partition (read once per script run).
local watched_now = nil
local function watched()
  if watched_now == nil then watched_now = (tonumber(redis.call('GET', WATCHERS) or '0') or 0) > 0 end
  return watched_now
end

-- Paused queues seen by this script run (a batch's jobs mostly share one queue).
local paused_now = {}
local function is_paused(queue)
  local p = paused_now[queue]
  if p == nil then
    p = redis.call('SISMEMBER', PAUSED, queue) == 1
    paused_now[queue] = p
  end
  return p
end

-- Sorted-set writes of this script run (state indexes and timers), applied together by
-- flush_writes(): per key, member -> score, or false for a removal; a member's last write wins.
-- One ZADD and one ZREM per key and run instead of one call per job: each redis.call from Lua
-- costs more than the sorted-set work it does.
local ZW = {}
local function zset(key, member, score)
  local t = ZW[key]
  if not t then
    t = {}
    ZW[key] = t
  end
  t[member] = score
end
local function zrem(key, member) zset(key, member, false) end

-- Payloads of new jobs of this script run, written with one MSET by flush_writes().
local PAYLOADS = {}

-- Arguments per call at most when flushing (Lua's unpack has a stack limit).
local FLUSH_CHUNK = 1000

-- Calls cmd with key and the items of list in chunks.
local function call_chunked(cmd, key, list)
  for i = 1, #list, FLUSH_CHUNK do
    local j = math.min(i + FLUSH_CHUNK - 1, #list)
    if key then
      redis.call(cmd, key, unpack(list, i, j))
    else
      redis.call(cmd, unpack(list, i, j))
    end
  end
end

-- Applies the buffered sorted-set writes and payloads. Runs after every script (see Scripts
-- in store/mod.rs), and before a script reads an index it wrote (tick.lua).
local function flush_writes()
  for key, t in pairs(ZW) do
    local adds, rems = {}, {}
    for m, score in pairs(t) do
      if score then
        adds[#adds + 1] = score
        adds[#adds + 1] = m
      else
        rems[#rems + 1] = m
      end
    end
    call_chunked('ZADD', key, adds)
    call_chunked('ZREM', key, rems)
  end
  ZW = {}
  call_chunked('MSET', nil, PAYLOADS)
  PAYLOADS = {}
end

-- The microseconds past the ms of the last clock() read (0-999, a string): events carry them,
-- so latency can be measured below a millisecond.
local NOW_US = '0'

-- Redis's clock in ms since the epoch, as a string.
local function clock()
  local t = redis.call('TIME')
  local us = tonumber(t[2])
  NOW_US = tostring(us % 1000)
  return tostring(tonumber(t[1]) * 1000 + math.floor(us / 1000))
end

-- Reads named fields of job `id` (record key rk) and always its state, seq and queue into a
-- table; nil when the job does not exist.
local function load(rk, id, fields)
  local vals = redis.call('HMGET', rk, 'state', 'seq', 'queue', unpack(fields))
  if not vals[1] then return nil end
  local job = { id = id, key = rk, state = vals[1], seq = tonumber(vals[2]) or 0, queue = vals[3] }
  for i, f in ipairs(fields) do job[f] = vals[i + 3] end
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

-- The job's member in the state indexes.
local function member(job) return job.queue .. ':' .. job.id end

-- Moves a job to another state: state index now, record fields at the next emit().
local function set_state(job, new, now)
  if job.state ~= new then
    local m = member(job)
    zrem(IDX[job.state], m)
    zset(IDX[new], m, '0')
  end
  job.state = new
  put(job, 'state', new)
  put(job, 'updated_at', now)
end

-- Messages for NATS of this script run, not yet in the outbox.
local OUTQ = {}
-- Messages per outbox entry at most.
local OUTBOX_ENTRY_MAX = 64
-- Outbox entries written by this script run.
local FLUSHED = 0

-- Writes the queued messages to the outbox as one entry: one field `m`, a JSON array of
-- messages (cjson is Redis's built-in C encoder), each the array `outbox` packs: kind, id,
-- queue, type, attempt, state, worker_id, time (ms), error, seq, traceparent, run message id
-- suffix, µs past the ms. The relay decodes it. Runs after every script (see Scripts in
-- store/mod.rs), and whenever an entry is full.
local function flush_outbox()
  if #OUTQ > 0 then
    redis.call('XADD', OUTBOX, '*', 'm', cjson.encode(OUTQ))
    OUTQ = {}
    FLUSHED = FLUSHED + 1
  end
end

-- With a consumer (prompt publishing): the entries this run wrote, read into the consumer's
-- pending list of the relay group, as XREADGROUP gives them ({ {id, {'m', json}}, ... }), for
-- the caller to publish now. An entry stays pending until the caller (or, if it fails or
-- dies, a relay) has published it. Entries no one has read yet (written without a consumer)
-- come with them. Nothing without a consumer, and nothing if the read fails: the relays' own
-- reads then find the entries, as without prompt publishing.
local function delivered()
  if FLUSHED == 0 or CONSUMER == nil or CONSUMER == '' then return {} end
  local r = redis.pcall('XREADGROUP', 'GROUP', 'relay', CONSUMER, 'COUNT', tostring(FLUSHED + 16), 'STREAMS', OUTBOX, '>')
  if type(r) ~= 'table' or r.err or not r[1] then return {} end
  return r[1][2]
end

-- Queues a message for NATS. kind: run|processing|complete|failed|cancelled.
local function outbox(job, kind, attempt, now, worker_id, err, seq, msg_suffix)
  OUTQ[#OUTQ + 1] = { kind, job.id, job.queue, job.type, tostring(attempt), job.state, worker_id or '', tostring(now),
    err or '', tostring(seq or 0), job.traceparent or '', msg_suffix or '', NOW_US }
  if #OUTQ >= OUTBOX_ENTRY_MAX then flush_outbox() end
end

-- Records a transition: the buffered field writes and the history entry in one HSET, the
-- outbox (kind may be nil), and a wake-up for the job's watchers (none for a new job).
--
-- Speed: `now` and `attempt` travel as strings where possible; Lua turns a number into a
-- string with sprintf, which was a tenth of Redis's time per job.
local function emit(job, kind, attempt, now, worker_id, err)
  local k = job.key
  local seq = job.seq + 1
  job.seq = seq
  local s = tostring(seq)
  put(job, 'seq', s)
  put(job, 'h' .. s, job.state .. '|' .. attempt .. '|' .. (worker_id or '') .. '|' .. now .. '|' .. (err or ''))
  redis.call('HSET', k, unpack(job.w))
  job.w = nil
  if seq > HISTORY then redis.call('HDEL', k, 'h' .. (seq - HISTORY)) end
  if kind then outbox(job, kind, attempt, now, worker_id, err, s) end
  if seq > 1 and watched() then redis.call('PUBLISH', k, s) end
end

-- Puts a job on the run queue for its current attempt (QUEUED jobs have no timer: the
-- sweeper finds lost run messages by comparing the queue with the run stream).
local function enqueue(job, now)
  set_state(job, 'QUEUED', now)
  zrem(TIMERS, job.id)
  emit(job, 'run', job.attempt, now)
end

-- Ends a job in a terminal state: finished now, expiring after its retention.
local function finish(job, state, now)
  set_state(job, state, now)
  put(job, 'finished_at', now)
  local s, f, c = RET_S, RET_F, RET_C
  if job.ret then s, f, c = string.match(job.ret, '^(%d+)|(%d+)|(%d+)$') end
  local keep = c
  if state == 'SUCCEEDED' then keep = s elseif state == 'FAILED' then keep = f end
  zset(TIMERS, job.id, tonumber(now) + tonumber(keep))
end

-- Backoff delay in ms before attempt n+1 after n failed attempts, with jitter r in [0,1).
-- The policy is packed as "initial|max|multiplier|jitter".
local function backoff(job, n, r)
  local initial, max, mult, jitter = string.match(job.b, '^([^|]+)|([^|]+)|([^|]+)|([^|]+)$')
  local d = tonumber(initial) * (tonumber(mult) ^ (n - 1))
  if d > tonumber(max) then d = tonumber(max) end
  return math.floor(d * (1 + tonumber(jitter) * (2 * r - 1)))
end

-- Fields a failed attempt needs (see fail_attempt).
local FAIL_FIELDS = { 'type', 'attempt', 'max_attempts', 'retry_base', 'cancel_requested', 'b', 'worker_id',
  'traceparent', 'cancel_reason', 'ret' }

-- Ends the current attempt of a RUNNING job as failed: CANCELLED when cancellation was
-- requested, SCHEDULED (or QUEUED when delay is 0) while attempts are left and the error is
-- retryable, else FAILED. delay < 0 means "use the backoff policy".
local function fail_attempt(job, err, retryable, delay, r, now)
  local k = job.key
  local attempt = tonumber(job.attempt)
  local base = tonumber(job.retry_base or '0')
  redis.call('HDEL', k, 'lease_id', 'lease_deadline')
  put(job, 'error', err)
  put(job, 'error_retryable', retryable and '1' or '0')
  put(job, 'error_attempt', job.attempt)
  if job.cancel_requested == '1' then
    err = job.cancel_reason or err
    put(job, 'error', err)
    put(job, 'error_retryable', '0')
    finish(job, 'CANCELLED', now)
    emit(job, 'cancelled', attempt, now, job.worker_id, err)
  elseif retryable and (attempt - base) < tonumber(job.max_attempts) then
    if delay < 0 then delay = backoff(job, attempt - base, r) end
    local run_at = tonumber(now) + delay
    set_state(job, 'SCHEDULED', now)
    put(job, 'run_at', run_at)
    emit(job, 'failed', attempt, now, job.worker_id, err)
    job.attempt = tostring(attempt + 1)
    redis.call('HSET', k, 'attempt', job.attempt)
    if delay <= 0 then
      enqueue(job, now)
    else
      zset(TIMERS, job.id, run_at)
    end
  else
    finish(job, 'FAILED', now)
    emit(job, 'failed', attempt, now, job.worker_id, err)
  end
end

-- The reply of most scripts: a status word, then the whole record as field/value pairs.
local function reply(status, rk, pk)
  local r = redis.call('HGETALL', rk)
  local payload = redis.call('GET', pk)
  if payload then
    table.insert(r, 'payload')
    table.insert(r, payload)
  end
  table.insert(r, 1, status)
  return r
end

-- Queues already added to the queue set by this script run.
local seen_queues = {}

-- Creates one job from the 14 arguments a[1..14] of create.lua, at `now`, with record key
-- rk, payload key pk and idempotency key ik (unused when a[9] is empty).
-- Returns 'OK' or 'EXISTS', and the id of the job (the existing one for 'EXISTS').
local function create_job(rk, pk, ik, a, now)
  local id, queue, idem_key = a[1], a[2], a[9]
  if idem_key ~= '' then
    local existing = redis.call('GET', ik)
    if existing then return 'EXISTS', existing end
    redis.call('SET', ik, id, 'PX', a[10])
  end
  local run_at = a[8]
  if run_at == '' then run_at = tostring(tonumber(now) + tonumber(a[14])) end
  local state, later = 'QUEUED', tonumber(run_at) > tonumber(now)
  if later then state = 'SCHEDULED' else run_at = now end
  PAYLOADS[#PAYLOADS + 1] = pk
  PAYLOADS[#PAYLOADS + 1] = a[4]
  local job = { id = id, key = rk, queue = queue, type = a[3], state = state, attempt = '1', traceparent = a[12],
    seq = 0, w = { 'queue', queue, 'type', a[3], 'state', state, 'attempt', '1', 'max_attempts', a[5], 'b', a[6],
      'timeout', a[7], 'run_at', run_at, 'created_at', now, 'updated_at', now } }
  if idem_key ~= '' then put(job, 'idem_key', idem_key) end
  if a[11] ~= '{}' then put(job, 'labels', a[11]) end
  if a[12] ~= '' then put(job, 'traceparent', a[12]) end
  if a[13] ~= '' then put(job, 'ret', a[13]) end
  if not seen_queues[queue] then
    redis.call('SADD', QUEUES, queue)
    seen_queues[queue] = true
  end
  zset(IDX[state], member(job), '0')
  if later then
    zset(TIMERS, id, run_at)
    emit(job, nil, '1', now)
  else
    emit(job, 'run', '1', now)
  end
  return 'OK', id
end

-- Fields of a QUEUED job a claim reads: what it checks and what its reply carries.
local CLAIM_FIELDS = { 'type', 'attempt', 'traceparent', 'max_attempts', 'retry_base', 'b', 'timeout', 'run_at',
  'idem_key', 'labels', 'created_at', 'error', 'error_retryable', 'error_attempt' }

-- QUEUED -> RUNNING for `attempt` (a string, as in the run message), with a lease of
-- lease_ms from now.
-- Returns 'OK' and the reply of a granted claim without its payload (see claim.lua), or
-- 'NOT_FOUND', or 'FAILED_PRECONDITION' and the reason.
local function claim_job(rk, id, attempt, worker_id, lease_id, lease_ms, now)
  local job = load(rk, id, CLAIM_FIELDS)
  if not job then return 'NOT_FOUND' end
  if job.state ~= 'QUEUED' or job.attempt ~= attempt then
    return 'FAILED_PRECONDITION', 'job is ' .. job.state .. ' on attempt ' .. job.attempt
  end
  if is_paused(job.queue) then
    return 'FAILED_PRECONDITION', 'queue ' .. job.queue .. ' is paused'
  end
  -- As a string once (Lua formats a number with sprintf each time it becomes one).
  local deadline = tostring(tonumber(now) + tonumber(lease_ms))
  set_state(job, 'RUNNING', now)
  put(job, 'worker_id', worker_id)
  put(job, 'lease_id', lease_id)
  put(job, 'lease_deadline', deadline)
  put(job, 'started_at', now)
  -- Only an earlier attempt can have left progress behind.
  if attempt ~= '1' then redis.call('HDEL', rk, 'progress') end
  zset(TIMERS, id, deadline)
  emit(job, 'processing', attempt, now, worker_id)
  -- The record now is what was read plus what was written: a QUEUED job has no progress,
  -- result, finish time or cancellation request (RetryJob clears them).
  return 'OK', { 'OK', now, deadline, job.queue, job.type, job.attempt, job.max_attempts, job.retry_base or '',
    job.b, job.timeout, job.run_at, job.idem_key or '', job.labels or '', job.traceparent or '', job.created_at,
    job.error or '', job.error_retryable or '', job.error_attempt or '' }
end

-- RUNNING (same lease) -> SUCCEEDED with `result`. The same report again is a no-op ('OK');
-- any other lease gets 'FAILED_PRECONDITION' and the reason, and changes nothing.
-- Returns the status, the reason of a refusal, and on 'OK' the job's fields (queue, type,
-- started_at) with `fresh` true when this call recorded the success.
local function complete_job(rk, id, lease_id, result, now)
  local job = load(rk, id, { 'lease_id', 'done_lease', 'done_kind', 'type', 'attempt', 'worker_id',
    'traceparent', 'started_at', 'ret' })
  if not job then return 'NOT_FOUND' end
  if job.state == 'RUNNING' and job.lease_id == lease_id then
    finish(job, 'SUCCEEDED', now)
    put(job, 'result', result)
    put(job, 'done_lease', lease_id)
    put(job, 'done_kind', 'complete')
    redis.call('HDEL', rk, 'lease_id', 'lease_deadline')
    emit(job, 'complete', job.attempt, now, job.worker_id)
    job.fresh = true
    return 'OK', nil, job
  end
  if job.done_lease == lease_id and job.done_kind == 'complete' then return 'OK', nil, job end
  return 'FAILED_PRECONDITION', 'lease ' .. lease_id .. ' is not held (job is ' .. job.state .. ')'
end

-- The reply of one item: the record after 'OK'/'EXISTS' when rk is given, else the bare
-- status; a refusal with its reason.
local function item_reply(status, reason, rk, pk)
  if status == 'OK' or status == 'EXISTS' then
    if rk then return reply(status, rk, pk) end
    return { status }
  end
  if reason then return { status, reason } end
  return { status }
end
