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
-- tally (ops of the form TALLY totals command key field [value]) is bus/tally.lua, put before this script
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
