#!lua name=writ_v2
-- Writ's one server-side function: check-and-apply for one transaction. Every key it
-- touches is in the transaction's hash slot ({<txn>}), so it runs atomically on the
-- slot's master and is replicated as its effects. Every rule stays in Rust; this only
-- refuses a write computed from a version that is no longer current.
--
-- KEYS[1]: the transaction's meta hash (field v: its version, the nonce of its last write).
-- KEYS[2]: the nonces of its recent writes, by the time they were applied (a sorted set):
-- a write re-sent within a minute is recognised, however many writes came between.
-- KEYS[3..]: the keys the writes touch.
-- ARGV[1]: the version the caller read ('' = none: the transaction is new).
-- ARGV[2]: this write's nonce (random, so a version read from one history never matches
-- another history's: a stale master's read cannot commit on a promoted replica).
-- ARGV[3..]: writes, each `op, key index, expire-at ms ('0': none), n, n args`.
-- Returns {1, new version} (applied), {2, version} (this nonce was applied before: a
-- re-sent write), or {0, version} (stale: read again). A malformed write is refused whole,
-- before anything is written.
local allowed = { HSET = true, HDEL = true, ZADD = true, ZREM = true }
local function apply(keys, args)
  local v = redis.call('HGET', keys[1], 'v') or ''
  if v ~= args[1] then
    if redis.call('ZSCORE', keys[2], args[2]) then
      -- A write of our own, so a WAIT pipelined after this call covers the earlier one.
      redis.call('HINCRBY', keys[1], 'seen', 1)
      return { 2, v }
    end
    return { 0, v }
  end
  if args[2] == nil or args[2] == '' then
    return redis.error_reply('ERR writ_apply: malformed write')
  end
  local ops, i = {}, 3
  while i <= #args do
    local op, key = args[i], keys[tonumber(args[i + 1])]
    local at, n = tonumber(args[i + 2]), tonumber(args[i + 3])
    if not allowed[op] or key == nil or at == nil or n == nil or n < 0
      or i + 3 + n > #args then
      return redis.error_reply('ERR writ_apply: malformed write')
    end
    ops[#ops + 1] = { op, key, at, i + 4, i + 3 + n }
    i = i + 4 + n
  end
  for _, o in ipairs(ops) do
    local op, key, at = o[1], o[2], o[3]
    if o[5] >= o[4] then
      redis.call(op, key, unpack(args, o[4], o[5]))
    end
    -- Expiry is only ever extended (PEXPIRETIME is -1 for a key without one).
    if at > 0 and redis.call('EXISTS', key) == 1 then
      local now = redis.call('PEXPIRETIME', key)
      if now == -1 or now < at then redis.call('PEXPIREAT', key, at) end
    end
  end
  redis.call('HSET', keys[1], 'v', args[2])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', keys[2], now, args[2])
  redis.call('ZREMRANGEBYSCORE', keys[2], '-inf', '(' .. (now - 60000))
  redis.call('ZREMRANGEBYRANK', keys[2], 0, -4097)
  local at = redis.call('PEXPIRETIME', keys[1])
  if at > 0 then redis.call('PEXPIREAT', keys[2], at) end
  return { 1, args[2] }
end

-- A write that changes nothing a reader sees, so a WAIT pipelined after it covers
-- everything the master holds of the transaction (a barrier for an answer that was read,
-- not written). KEYS[1]: the transaction's meta hash; writes only if it exists.
local function touch(keys)
  if redis.call('EXISTS', keys[1]) == 1 then
    redis.call('HINCRBY', keys[1], 'seen', 1)
    return 1
  end
  return 0
end

-- Holds a token id's pointer for a transaction until ARGV[2] (expire-at ms): a pointer
-- claimed with a short lease becomes the token's for good once its record is stored.
-- KEYS[1]: the pointer. ARGV[1]: the transaction. Returns 1, or 0 if another
-- transaction holds the pointer (the lease ran out and another attempt took it).
-- ('0' for ARGV[2]: no expiry.)
local function hold(keys, args)
  local cur = redis.call('GET', keys[1])
  if cur ~= false and cur ~= args[1] then return 0 end
  if tonumber(args[2]) > 0 then
    redis.call('SET', keys[1], args[1], 'PXAT', args[2])
  else
    redis.call('SET', keys[1], args[1])
  end
  return 1
end

-- Raises a counter to at least ARGV[1] (the audit trail's high-water mark).
local function raise(keys, args)
  local v = tonumber(redis.call('GET', keys[1]) or '0')
  local n = tonumber(args[1])
  if n > v then redis.call('SET', keys[1], args[1]) end
  return 1
end

-- Enters a transaction in a listing index (a sorted set in lex order of raw ids).
-- KEYS[1]: the index. ARGV[1]: the member. ARGV[2]: expire-at ms ('0': none), only ever
-- extended. ARGV[3]: members below this one (transactions long gone) are dropped ('' none).
local function index(keys, args)
  redis.call('ZADD', keys[1], 0, args[1])
  local at = tonumber(args[2])
  if at > 0 then
    local now = redis.call('PEXPIRETIME', keys[1])
    if now == -1 or now < at then redis.call('PEXPIREAT', keys[1], at) end
  end
  if args[3] ~= '' then redis.call('ZREMRANGEBYLEX', keys[1], '-', '(' .. args[3]) end
  return 1
end

-- Gives up a pointer's claim if this transaction holds it. KEYS[1]: the pointer.
-- ARGV[1]: the transaction. Returns 1 if released.
local function release(keys, args)
  if redis.call('GET', keys[1]) == args[1] then
    redis.call('DEL', keys[1])
    return 1
  end
  return 0
end

-- A transaction's first root: {record, state} (nil when it has none).
-- KEYS[1]: meta hash, KEYS[2]: records, KEYS[3]: states.
local function root(keys)
  local id = redis.call('HGET', keys[1], 'root')
  if not id then return nil end
  return { redis.call('HGET', keys[2], id), redis.call('HGET', keys[3], id) }
end

redis.register_function('writ_apply_v2', apply)
redis.register_function('writ_index_v2', index)
redis.register_function{ function_name = 'writ_root_v2', callback = root, flags = { 'no-writes' } }
redis.register_function('writ_raise_v2', raise)
redis.register_function('writ_touch_v2', touch)
redis.register_function('writ_hold_v2', hold)
redis.register_function('writ_release_v2', release)
