-- One stage step, atomically (DESIGN §3 "Message envelope and delivery"):
-- skip if the input was already done, check optimistic guards, apply the state writes,
-- add every output (trimmed), mark the input done, then XACK it.
-- KEYS[1] done key, KEYS[2] input stream (may be an unused name when there is no input entry)
-- ARGV[1] JSON {ttl, group, entry_id, guards=[[key, field, expected|null]], ops=[[cmd, args...]],
--               outputs=[[stream, maxlen, [field, value, ...]]]}
-- returns 1 done, 0 duplicate (acked only), -1 guard conflict (nothing written, not acked)
local p = cjson.decode(ARGV[1])
local function ack()
  if p.entry_id ~= '' then redis.call('XACK', KEYS[2], p.group, p.entry_id) end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  ack()
  return 0
end
for _, g in ipairs(p.guards) do
  local actual = redis.call('HGET', g[1], g[2])
  local expected = g[3]
  if expected == cjson.null then expected = false end
  if actual ~= expected then return -1 end
end
-- A hash of numbers with its running totals (hash fields sum and count) in another key, so a reader
-- needs no pass over every value. The old value is read here, in the same atomic script as the
-- write, so the totals move by exactly the difference whatever runs concurrently. A value that is not
-- a finite number cannot be summed: the totals are dropped, and the governor, which checks count
-- against HLEN, rebuilds them from the hash (and counts an unreadable value as everything).
-- The same function is in services/governor.lua (a script cannot include another).
local function tally(totals, command, key, field, value)
  local old = redis.call('HGET', key, field)
  if command == 'HSET' then redis.call('HSET', key, field, value) else redis.call('HDEL', key, field) end
  local delta, count = 0, 0
  if old then
    local n = tonumber(old)
    if n == nil or n ~= n or n == math.huge or n == -math.huge then return redis.call('DEL', totals) end
    delta, count = -n, -1
  end
  if command == 'HSET' then
    local n = tonumber(value)
    if n == nil or n ~= n or n == math.huge or n == -math.huge then return redis.call('DEL', totals) end
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
for _, op in ipairs(p.ops) do
  if op[1] == 'TALLY' then
    tally(op[2], op[3], op[4], op[5], op[6])
  else
    redis.call(unpack(op))
  end
end
for _, o in ipairs(p.outputs) do
  redis.call('XADD', o[1], 'MAXLEN', '~', o[2], '*', unpack(o[3]))
end
redis.call('SET', KEYS[1], '1', 'EX', p.ttl)
ack()
return 1
