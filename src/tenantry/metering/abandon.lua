-- Tenantry: undo an admission the gateway gave up waiting for (meter.lua's twin).
--
-- KEYS[1] the quota counter the admission counted in (its window's)
-- KEYS[2] the in-flight sorted set          KEYS[3] the call's abandonment mark
-- ARGV[1] call id     ARGV[2] cost (quota units)     ARGV[3] how long the mark is kept, ms
--
-- When Redis hangs, the gateway stops waiting for an admission (the plan's outage policy decides the
-- call) but the script it sent may still run when Redis resumes. Both scripts are atomic on keys of one
-- hash slot, so whichever runs first, the call ends up not admitted: run first, this leaves a mark the
-- admission refuses on; run second, it finds the call in the in-flight set (every admission enters it)
-- and takes it out, with its quota units. The request rate is not given back: the request was made.
--
-- Returns 1 (the admission had run: undone), 2 (it had not: it never will), 0 (already settled).

if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', tonumber(ARGV[3])) then
  return 0
end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then
  local cost = tonumber(ARGV[2])
  if cost > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
    redis.call('DECRBY', KEYS[1], cost)
  end
  return 1
end
return 2
