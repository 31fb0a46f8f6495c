-- The governor's decision and its stage step, in one script (DESIGN §4.3, docs/EXECUTION.md).
-- Redis runs one script at a time, so however many governor replicas race, each plan sees the
-- counts every earlier decision left and the limits hold exactly.
-- risk/limits.py is the Python reference of these rules; a test requires both to agree.
-- control_reason is a copy of the kill-switch model (contracts/control.py plan_verdict), kept only because
-- the decision must be one atomic script; tests/integration/test_governor_killswitch_model.py checks it
-- against the model for every scope, state, flatten, generation and halt.
--
-- KEYS[1]  done:governor:<plan message id>      KEYS[7]  exit_locks   (symbol -> plan_id)
-- KEYS[2]  stream apply.plan (XACK)             KEYS[8]  open_positions (symbol -> notional)
-- KEYS[3]  control                              KEYS[9]  rate:<symbol> (zset plan_id by plan time)
-- KEYS[4]  halts                                KEYS[10] cooldowns    (symbol -> last close time)
-- KEYS[5]  reservations (plan_id -> notional)   KEYS[11] stream apply.approved
-- KEYS[6]  entry_locks  (symbol -> plan_id)     KEYS[12] stream governor.decision
-- KEYS[13] open_positions totals (sum, count)   KEYS[14] reservations totals (sum, count)
-- KEYS[15] position:<symbol> (side, opened_at: which trade is open)
-- ARGV[1]  JSON, every number as a string (no float formatting surprises):
--   group, entry_id, ttl, maxlen, kind, symbol, plan_id, time, notional, leverage, allowlisted ("1"/"0"),
--   closes (an exit: the position side it closes), opened_at (an exit: its trade's opened_at, or ""),
--   max_leverage, max_per_trade, max_total, max_open, per_hour, per_5m, cooldown_ms,
--   hour_ms, five_ms, trim_ms, tolerance,
--   approval, decision: flat [field, value, ...] envelopes built in Python (decision with the approved data);
--   reject_before, reject_after: a rejection's data JSON around its one reason code, so the
--   script only concatenates (reason codes are plain [a-z0-9_] and need no JSON escaping).
-- Returns {1, "approved" | reason} when decided, {0, "duplicate"} when the plan was already done.
local p = cjson.decode(ARGV[1])

local function ack()
  if p.entry_id ~= '' then redis.call('XACK', KEYS[2], p.group, p.entry_id) end
end

if redis.call('EXISTS', KEYS[1]) == 1 then
  ack()
  return {0, 'duplicate'}
end

local function int_text(x)
  return string.format('%d', x)
end

local function exceeds(value, limit)
  return value > limit * (1 + tonumber(p.tolerance))
end

local function control_reason()
  local flat = redis.call('HGETALL', KEYS[3])
  if #flat == 0 then return 'control_missing' end
  local c = {}
  for i = 1, #flat, 2 do c[flat[i]] = flat[i + 1] end
  local generation, state, scope = c['generation'], c['state'], c['scope']
  if scope == nil or scope == '' then scope = 'all' end
  if generation == nil or not string.match(generation, '^%s*[-+]?%d+%s*$') then return 'control_missing' end
  if state ~= 'engaged' and state ~= 'released' then return 'control_missing' end
  if scope ~= 'entries' and scope ~= 'exits' and scope ~= 'all' then return 'control_missing' end
  local engaged = state == 'engaged'
  if engaged and scope == 'all' then return 'killswitch_all' end
  local flatten = engaged and c['flatten'] == '1'
  local halted = redis.call('HLEN', KEYS[4]) > 0
  if p.kind == 'ENTRY' and ((engaged and scope == 'entries') or flatten or halted) then
    return 'killswitch_entries'
  end
  return nil
end

local function finite(n)
  return n ~= nil and n == n and n ~= math.huge and n ~= -math.huge
end

local function sum_values(key)
  local total = 0
  for _, v in ipairs(redis.call('HVALS', key)) do
    local n = tonumber(v)
    if not finite(n) then return math.huge end  -- unreadable counts as everything (fail closed)
    total = total + n
  end
  return total
end

-- Notional in use is read from running totals (hash fields sum, count), O(1) whatever the number of
-- entries: every script that writes positions:open or reservations moves them in the same atomic
-- step (tally below, and bus/stage.lua's copy for position-state and the reconciler). A hash of up
-- to RESUM_UP_TO entries is summed anyway (as cheap as reading the totals) and its totals put right,
-- so a write that bypassed them (a version before them, a hand edit) is repaired while the hash is
-- small; above that, a count that differs from HLEN triggers the same rebuild, once. A value that is
-- not a finite number leaves no totals, so every plan sums again and counts it as everything (fail closed).
local RESUM_UP_TO = 64
local function total_of(key, totals, n)  -- n: HLEN of key, read once per plan
  local kept = redis.call('HMGET', totals, 'sum', 'count')
  local sum = tonumber(kept[1])
  if n > RESUM_UP_TO and finite(sum) and tonumber(kept[2]) == n then return sum end
  local total = sum_values(key)
  if total == math.huge then
    if kept[1] or kept[2] then redis.call('DEL', totals) end
  elseif sum ~= total or tonumber(kept[2]) ~= n then
    redis.call('HSET', totals, 'sum', string.format('%.17g', total), 'count', n)
  end
  return total
end

-- tally (HSET or HDEL one field of a tallied hash, moving its totals by the difference) is
-- bus/tally.lua, put before this script by services/governor.py: the one copy, shared with bus/stage.lua

local function entry_reason(t, notional)
  if p.allowlisted ~= '1' then return 'not_allowlisted' end
  if tonumber(p.leverage) > tonumber(p.max_leverage) then return 'leverage' end
  if exceeds(notional, tonumber(p.max_per_trade)) then return 'notional_per_trade' end
  if redis.call('HEXISTS', KEYS[8], p.symbol) == 1 then return 'position_open' end
  local last = redis.call('HGET', KEYS[10], p.symbol)
  local closed = last and tonumber(last)
  -- closed at or after the signal's market time: the position was open on the signal's bar, refused
  -- whether or not its exit reached us first (see risk/limits.py)
  if closed and t <= closed then return 'position_open' end
  if redis.call('HEXISTS', KEYS[6], p.symbol) == 1 then return 'entry_pending' end
  local cooldown = tonumber(p.cooldown_ms)
  if last and (closed == nil or (cooldown > 0 and t < closed + cooldown)) then return 'cooldown' end
  redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', '(' .. int_text(t - tonumber(p.trim_ms)))
  local hour, five = tonumber(p.hour_ms), tonumber(p.five_ms)
  -- both sides of the plan's time: plans arrive out of market-time order (see risk/limits.py)
  if redis.call('ZCOUNT', KEYS[9], '(' .. int_text(t - hour), '(' .. int_text(t + hour)) >= tonumber(p.per_hour) then
    return 'rate_hour'
  end
  if redis.call('ZCOUNT', KEYS[9], '(' .. int_text(t - five), '(' .. int_text(t + five)) >= tonumber(p.per_5m) then
    return 'rate_5m'
  end
  local open_n, reserved_n = redis.call('HLEN', KEYS[8]), redis.call('HLEN', KEYS[5])
  if open_n + reserved_n >= tonumber(p.max_open) then
    return 'max_open_positions'
  end
  local in_use = total_of(KEYS[8], KEYS[13], open_n) + total_of(KEYS[5], KEYS[14], reserved_n)
  if exceeds(in_use + notional, tonumber(p.max_total)) then
    return 'max_total_notional'
  end
  return nil
end

-- The open position is another trade than the one the exit is for (execution/gateway.py other_trade,
-- which apply-layer checks again before any order): it is on the side the exit does not close, or it
-- opened at another time than the plan names. For that exit no position is open.
local function other_trade()
  local held = redis.call('HMGET', KEYS[15], 'side', 'opened_at')
  if held[1] and held[1] ~= 'FLAT' and held[1] ~= p.closes then return true end
  return p.opened_at ~= '' and held[2] ~= false and held[2] ~= p.opened_at
end

local function exit_reason()
  if redis.call('HEXISTS', KEYS[8], p.symbol) == 0 or other_trade() then return 'no_open_position' end
  if redis.call('HEXISTS', KEYS[7], p.symbol) == 1 then return 'exit_in_flight' end
  return nil
end

local function emit(stream, fields)
  redis.call('XADD', stream, 'MAXLEN', '~', p.maxlen, '*', unpack(fields))
end

local t = tonumber(p.time)
local reason = control_reason()
if reason == nil then
  if p.kind == 'ENTRY' then
    reason = entry_reason(t, tonumber(p.notional))
  else
    reason = exit_reason()
  end
end

if reason == nil then
  if p.kind == 'ENTRY' then
    tally(KEYS[14], 'HSET', KEYS[5], p.plan_id, p.notional)
    redis.call('HSET', KEYS[6], p.symbol, p.plan_id)
    redis.call('ZADD', KEYS[9], p.time, p.plan_id)
  else
    redis.call('HSET', KEYS[7], p.symbol, p.plan_id)
  end
  emit(KEYS[11], p.approval)
  emit(KEYS[12], p.decision)
else
  local fields = p.decision
  for i = 1, #fields, 2 do
    if fields[i] == 'data' then fields[i + 1] = p.reject_before .. reason .. p.reject_after end
  end
  emit(KEYS[12], fields)
end

redis.call('SET', KEYS[1], '1', 'EX', p.ttl)
ack()
return {1, reason or 'approved'}
