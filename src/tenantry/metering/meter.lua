-- Tenantry per-tenant meter: decide and count in one atomic step.
--
-- KEYS[1] quota counter, current window      KEYS[2] quota counter, previous window
--         (the calls window or the reads window: the caller picks the keys and ARGV[4]; the script is the same)
-- KEYS[3] rate counter, current minute       KEYS[4] rate counter, previous minute
-- KEYS[5] in-flight sorted set (member = call id, score = deadline ms)
-- KEYS[6] the call's abandonment mark (abandon.lua), in the tenant's hash slot
--
-- ARGV[1]  now_ms (the caller's clock)
-- ARGV[2]  call id
-- ARGV[3]  cost (quota units this call consumes, >= 0)
-- ARGV[4]  quota limit per window, -1 = no quota
-- ARGV[5]  quota window ms             ARGV[6]  ms elapsed in the current quota window
-- ARGV[7]  requests per rate window, -1 = no rate limit
-- ARGV[8]  rate window ms              ARGV[9]  ms elapsed in the current rate window
-- ARGV[10] max in-flight calls, -1 = no cap
-- ARGV[11] call timeout ms (the in-flight entry's deadline is now + this)
--
-- Both windowed limits are sliding-window counters: the estimate is
--   prev * (w - e) / w + cur
-- (e = ms elapsed in the current fixed window). Everything is kept scaled by w
-- so the arithmetic is on integers (exact in Lua's doubles below 2^53).
--
-- Every limit is checked before anything is written: a refused call consumes no quota and no slot
-- (it does count as a request against the rate, when the rate let it through).
-- A call the gateway abandoned (it timed out waiting for this script) is refused outright: whichever
-- of this script and abandon.lua runs first, the call ends up not admitted. Every admitted call is
-- entered in the in-flight set, capped or not, so abandon.lua can tell whether it was admitted.
--
-- Returns {admitted 0|1, reason or "", retry_after_ms (-1 = never),
--          quota remaining (-1 = no quota), rate remaining (-1 = no rate limit),
--          rate retry_after_ms (0 = the rate let this request through, -1 = never)},
-- the remainders after this call if admitted, as they stand if refused. The last tells the gateway how
-- long every request of the tenant is refused by the rate, whatever else would hold it: until then the
-- gateway refuses them itself (rate_limited), without asking.

local now = tonumber(ARGV[1])
local call_id = ARGV[2]
local cost = tonumber(ARGV[3])
local q_limit = tonumber(ARGV[4])
local q_w = tonumber(ARGV[5])
local q_e = tonumber(ARGV[6])
local r_limit = tonumber(ARGV[7])
local r_w = tonumber(ARGV[8])
local r_e = tonumber(ARGV[9])
local c_limit = tonumber(ARGV[10])
local timeout = tonumber(ARGV[11])

-- floor(a / b) for integers a, b > 0, corrected for floating-point rounding
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

-- One sliding-window counter check.
-- Returns ok, remaining now, remaining after this call (if ok), retry_after_ms (0 if ok, -1 if never).
local function window(cur_key, prev_key, limit, w, e, c)
  local counts = redis.call('MGET', cur_key, prev_key)
  local cur = tonumber(counts[1] or '0')
  local prev = tonumber(counts[2] or '0')
  local free = limit * w - (prev * (w - e) + cur * w)   -- (limit - estimate) * w
  local remaining = 0
  if free > 0 then
    remaining = idiv(free, w)
  end
  if free >= c * w then
    return true, remaining, idiv(free - c * w, w), 0
  end
  if c > limit then
    return false, remaining, remaining, -1
  end
  if cur + c <= limit then
    -- The current window alone has room: wait until the previous window's
    -- weight has decayed enough, i.e. the least e2 with prev * (w - e2) <= room * w.
    -- (prev > 0 here, or the call would have been admitted.) e2 <= w.
    local e2 = w - idiv((limit - cur - c) * w, prev)
    return false, remaining, remaining, e2 - e
  end
  -- The current window alone is too full: wait into the next window, where this
  -- window's count becomes the decaying previous one (cur > 0 here, since c <= limit).
  -- If that never makes room (e3 = w) the window after next starts empty.
  local e3 = w - idiv((limit - c) * w, cur)
  return false, remaining, remaining, (w - e) + e3
end

if call_id ~= '' and redis.call('EXISTS', KEYS[6]) == 1 then
  return {0, 'abandoned', -1, -1, -1, 0}
end

local admitted = true
local reason = ''
local retry = 0
local q_remaining, q_after = -1, -1
local r_remaining, r_after = -1, -1

local function refuse(why, after)
  -- Report the limit that holds the call longest; -1 (never) outranks any wait.
  if admitted or (retry ~= -1 and (after == -1 or after > retry)) then
    reason = why
    retry = after
  end
  admitted = false
end

local rate_ok = false
local r_retry = 0
if r_limit >= 0 then
  local ok
  ok, r_remaining, r_after, r_retry = window(KEYS[3], KEYS[4], r_limit, r_w, r_e, 1)
  if ok then
    rate_ok = true
  else
    refuse('rate_limited', r_retry)
  end
end

-- The request rate bounds requests, refused ones included: a request within the rate counts against
-- it whatever else refuses it (a tenant hammering past its quota is soon refused by the rate instead).
local function count_request()
  if rate_ok then
    if redis.call('INCR', KEYS[3]) == 1 then
      redis.call('PEXPIRE', KEYS[3], 2 * r_w)
    end
  end
end

if call_id ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
end
if c_limit >= 0 then
  if redis.call('ZCARD', KEYS[5]) >= c_limit then
    -- The earliest deadline is when a slot frees at the latest (a release may come sooner).
    local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
    if first[2] then
      refuse('concurrency_limited', tonumber(first[2]) - now)
    else
      refuse('concurrency_limited', -1)
    end
  end
end

if q_limit >= 0 then
  local ok, after
  ok, q_remaining, q_after, after = window(KEYS[1], KEYS[2], q_limit, q_w, q_e, cost)
  if not ok then
    if cost > q_limit then
      refuse('cost_exceeds_limit', -1)
    else
      refuse('quota_exceeded', after)
    end
  end
end

if not admitted then
  count_request()
  if rate_ok then
    r_remaining = r_after
  end
  return {0, reason, retry, q_remaining, r_remaining, r_retry}
end

-- Every limit passed: count the call against all of them. A counter key is
-- given its expiry when this creates it (the count it returns is this call's
-- alone): two windows from then, so it outlives its own window and the next,
-- where it is the previous one. PEXPIRE is relative, so it holds whatever
-- clock the caller uses. Every key this script writes is created here, with
-- its expiry, in the same atomic step: none is ever left without one.
count_request()
if call_id ~= '' then
  redis.call('ZADD', KEYS[5], now + timeout, call_id)
  -- The set must outlive its latest deadline; renewed (to twice the timeout) only
  -- when less than one timeout is left, so not on every call.
  if redis.call('PTTL', KEYS[5]) < timeout then
    redis.call('PEXPIRE', KEYS[5], 2 * timeout)
  end
end
if q_limit >= 0 and cost > 0 then
  if redis.call('INCRBY', KEYS[1], cost) == cost then
    redis.call('PEXPIRE', KEYS[1], 2 * q_w)
  end
end
return {1, '', 0, q_after, r_after, 0}
