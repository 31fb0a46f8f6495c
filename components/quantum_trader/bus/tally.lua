-- tally: HSET or HDEL one field of a hash of numbers whose running totals (hash fields sum and count)
-- live in another key, so a reader needs no pass over every value. The old value is read here, in the
-- same atomic script as the write, so the totals move by exactly the difference whatever runs
-- concurrently. A value that is not a finite number cannot be summed: the totals are dropped, and the
-- governor, which checks count against HLEN, rebuilds them from the hash (and counts an unreadable
-- value as everything).
-- The one copy: bus/step.py puts it before stage.lua, services/governor.py before governor.lua (a
-- script cannot include another, and both must move the same totals the same way).
local function tally_number(text)
  local n = tonumber(text)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return nil end
  return n
end

local function tally(totals, command, key, field, value)
  -- a new field (an opened position, a new reservation: the usual HSET) is written by HSETNX alone,
  -- whose answer says there was no old value; only an existing one is read before it is overwritten
  local old = false
  if command == 'HSET' then
    if redis.call('HSETNX', key, field, value) == 0 then
      old = redis.call('HGET', key, field)
      if old ~= value then redis.call('HSET', key, field, value) end
    end
  else
    old = redis.call('HGET', key, field)
    if old then redis.call('HDEL', key, field) end
  end
  local delta, count = 0, 0
  if old then
    local n = tally_number(old)
    if n == nil then return redis.call('DEL', totals) end
    delta, count = -n, -1
  end
  if command == 'HSET' then
    local n = tally_number(value)
    if n == nil then return redis.call('DEL', totals) end
    delta, count = delta + n, count + 1
  end
  local remaining
  if count ~= 0 then remaining = redis.call('HINCRBY', totals, 'count', count) end
  if remaining == 0 then
    redis.call('HSET', totals, 'sum', '0')  -- empty: exactly nothing, no float residue
  elseif delta ~= 0 then
    redis.call('HINCRBYFLOAT', totals, 'sum', string.format('%.17g', delta))
  end
end
