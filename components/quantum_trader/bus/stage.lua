-- Stage steps, atomically (DESIGN §3 "Message envelope and delivery"): for each input, skip it if it
-- was already done, check optimistic guards, apply the state writes, add every output (trimmed), mark
-- the input done and XACK it.
--
-- One step:  KEYS[1] done key, KEYS[2] input stream (may be an unused name when there is no input entry)
--            ARGV[1] JSON {ttl, group, entry_id, guards=[[key, field, expected|null]], ops=[[cmd, args...]],
--                          outputs=[[stream, maxlen, [field, value, ...]]]}
--            returns 1 done, 0 duplicate (acked only), -1 guard conflict (nothing written, not acked);
--            a failed write is an error reply, and the input is not marked done.
-- A batch:   KEYS done key and input stream of each step in turn (2 keys a step), ARGV[1] a JSON array
--            of the steps' objects above, applied in order as one script each would be; returns one
--            outcome per step, in order: 1, 0, -1, or the text "ERR <message>" for a step whose write
--            failed (that step is not marked done nor acked; the others are unaffected). The acks of
--            the whole batch are one XACK per input stream, sent last.
--
-- The done key is checked and set by one SET NX: a step that then fails a guard or a write removes it
-- again, in the same script, so no one ever sees a done key without its step (scripts are atomic).
-- tally (ops of the form TALLY totals command key field [value]) is bus/tally.lua, put before this script.
-- services/step_batch.lua runs this whole file as a function body (stage_step(KEYS, ARGV)), one step at
-- a time: a failed write must stay a raised error there, and the file must stay a valid function body.

local function error_text(e)
  if type(e) == 'table' and e.err then return e.err end
  return tostring(e)
end

-- The step's effects; false when a guard failed (before anything was written).
local function apply(p)
  for _, g in ipairs(p.guards) do
    local actual = redis.call('HGET', g[1], g[2])
    local expected = g[3]
    if expected == cjson.null then expected = false end
    if actual ~= expected then return false end
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
  return true
end

-- One step: its outcome (1, 0, -1) and whether its input entry is to be acked; an error is raised
-- after its done key was removed.
local function step(done_key, p)
  if not redis.call('SET', done_key, '1', 'EX', p.ttl, 'NX') then return 0, true end
  local ok, applied = pcall(apply, p)
  if not ok then
    redis.call('DEL', done_key)
    error(applied, 0)  -- the write's own error, as if no pcall had caught it
  end
  if not applied then
    redis.call('DEL', done_key)
    return -1, false
  end
  return 1, true
end

local p = cjson.decode(ARGV[1])
if p.ttl ~= nil then  -- one step
  local outcome, acked = step(KEYS[1], p)
  if acked and p.entry_id ~= '' then redis.call('XACK', KEYS[2], p.group, p.entry_id) end
  return outcome
end

local outcomes, acks, ack_order = {}, {}, {}
for i, one in ipairs(p) do
  local ok, outcome, acked = pcall(step, KEYS[2 * i - 1], one)
  if not ok then
    outcomes[i] = 'ERR ' .. error_text(outcome)
  else
    outcomes[i] = outcome
    if acked and one.entry_id ~= '' then
      local target = KEYS[2 * i] .. '\0' .. one.group
      if acks[target] == nil then
        acks[target] = {KEYS[2 * i], one.group}
        ack_order[#ack_order + 1] = target
      end
      table.insert(acks[target], one.entry_id)
    end
  end
end
for _, target in ipairs(ack_order) do
  local ack = acks[target]
  for first = 3, #ack, 1000 do  -- unpack's stack is bounded
    redis.call('XACK', ack[1], ack[2], unpack(ack, first, math.min(#ack, first + 999)))
  end
end
return outcomes
