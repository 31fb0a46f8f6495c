-- Several stage steps in one atomic script (services/step_batch.py puts bus/tally.lua before this file
-- and bus/stage.lua, as the function stage_step(KEYS, ARGV), where the marker line below is).
-- Each step is exactly the bus's stage step: its done key, guards, writes, outputs, done mark and XACK.
-- The batch stops at the first step whose outcome is not the one expected (a conflict, a duplicate
-- nobody knew of, an error): the steps after it were computed on the state it would have left, so
-- they are not tried (-2) and the caller recomputes them on what is really there.
-- KEYS: every step's keys in order. ARGV[1]: JSON [[key count, arg count, expected outcome], ...];
-- ARGV[2..]: every step's args in order. Returns one outcome per step: 1 done, 0 duplicate,
-- -1 conflict, -2 not tried, -3 failed (its error is logged; the step may be partly applied, as a
-- failed stage step may be).

-- Running totals' counts, once per batch: tally.lua moves `count` with one HINCRBY per tallied write.
-- Here the first write of a batch to a totals key does that HINCRBY (which also reads the count) and
-- the later ones only count in the script; the batch ends with one HINCRBY by what they added up to.
-- Nothing reads the count inside the batch but this code, so what others see is the same as one
-- HINCRBY each; `sum` moves exactly as tally.lua moves it, write by write (emptied: exactly 0).
local counts = {}  -- totals key -> {now = the count as the batch has moved it, unsent = not written yet}
local count_keys = {}

local function dropped(totals)
  counts[totals] = nil  -- the DEL takes what was not written with it, as it takes the rest
  return redis.call('DEL', totals)
end

local function tally(totals, command, key, field, value)
  local old = redis.call('HGET', key, field)
  if command == 'HSET' then redis.call('HSET', key, field, value) else redis.call('HDEL', key, field) end
  local delta, count = 0, 0
  if old then
    local n = tally_number(old)
    if n == nil then return dropped(totals) end
    delta, count = -n, -1
  end
  if command == 'HSET' then
    local n = tally_number(value)
    if n == nil then return dropped(totals) end
    delta, count = delta + n, count + 1
  end
  local remaining
  if count ~= 0 then
    local known = counts[totals]
    if known == nil then
      remaining = redis.call('HINCRBY', totals, 'count', count)
      counts[totals] = {now = remaining, unsent = 0}
      count_keys[#count_keys + 1] = totals
    else
      known.now = known.now + count
      known.unsent = known.unsent + count
      remaining = known.now
    end
  end
  if remaining == 0 then
    redis.call('HSET', totals, 'sum', '0')
  elseif delta ~= 0 then
    redis.call('HINCRBYFLOAT', totals, 'sum', string.format('%.17g', delta))
  end
end

local function send_counts()
  for _, totals in ipairs(count_keys) do
    local known = counts[totals]
    if known ~= nil and known.unsent ~= 0 then
      redis.call('HINCRBY', totals, 'count', known.unsent)
      known.unsent = 0
    end
  end
end

--@STAGE_STEP@

local layout = cjson.decode(ARGV[1])
local outcomes = {}
local next_key, next_arg, stopped = 1, 2, false
for i, shape in ipairs(layout) do
  local key_count, arg_count, expected = shape[1], shape[2], shape[3]
  if stopped then
    outcomes[i] = -2
  else
    local step_keys = {unpack(KEYS, next_key, next_key + key_count - 1)}
    local step_args = {unpack(ARGV, next_arg, next_arg + arg_count - 1)}
    local ok, outcome = pcall(stage_step, step_keys, step_args)
    if not ok then
      redis.log(redis.LOG_WARNING, 'step_batch: step ' .. i .. ' failed: ' .. tostring(outcome.err or outcome))
      outcome = -3
    end
    outcomes[i] = outcome
    stopped = outcome ~= expected
  end
  next_key, next_arg = next_key + key_count, next_arg + arg_count
end
send_counts()
return outcomes
