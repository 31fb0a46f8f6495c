-- Several stage steps in one atomic script (services/step_batch.py puts bus/tally.lua before this file
-- and bus/stage.lua, as the function stage_step(KEYS, ARGV), where the marker line below is: each step
-- is one call of the bus's own stage script, so its running totals move as bus/tally.lua moves them).
-- Each step is exactly the bus's stage step: its done key, guards, writes, outputs, done mark and XACK.
-- The batch stops at the first step whose outcome is not the one expected (a conflict, a duplicate
-- nobody knew of, an error): the steps after it were computed on the state it would have left, so
-- they are not tried (-2) and the caller recomputes them on what is really there.
-- KEYS: every step's keys in order. ARGV[1]: JSON [[key count, arg count, expected outcome], ...];
-- ARGV[2..]: every step's args in order. Returns one outcome per step: 1 done, 0 duplicate,
-- -1 conflict, -2 not tried, -3 failed (its error is logged; the step may be partly applied, as a
-- failed stage step may be).

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
return outcomes
