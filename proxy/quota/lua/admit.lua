-- One admission for every window of a quota, atomically, on the Redis server's clock.
-- A port of proxy/quota/schedule.py (earliest, earliest_in_window, headroom): same integers in,
-- same answer out. Times are microseconds.
--
-- KEYS[1]      the quota's pause key (a time until which nothing is admitted)
-- KEYS[2..n+1] one sorted set per window: member = admission id, score = admission time
-- ARGV[1] member   ARGV[2] max_wait   ARGV[3] cap per window, as a list "c1,c2,…"
-- ARGV[4] shadow (1 = log the admission now, whatever the decision)
-- ARGV[5..]  limit, width for each window
-- Returns {admitted, wait, paused, remaining1, reset1, remaining2, reset2, …}

local t0 = redis.call('TIME')
local now = tonumber(t0[1]) * 1000000 + tonumber(t0[2])
local member = ARGV[1]
local max_wait = tonumber(ARGV[2])
local shadow = ARGV[4] == '1'

local caps = {}
for c in string.gmatch(ARGV[3], '[^,]+') do caps[#caps + 1] = tonumber(c) end

-- index of the first entry greater than x (entries sorted ascending), 1-based; #log + 1 if none
local function upper(log, x)
  local lo, hi = 1, #log + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if log[mid] <= x then lo = mid + 1 else hi = mid end
  end
  return lo
end

local function earliest_in_window(log, limit, width, cap, t)
  local n = #log
  while true do
    local first = upper(log, t - width)
    local last = upper(log, t)  -- entries log[first .. last-1] lie in (t - width, t]
    if last - first + 1 > cap then
      t = log[last - cap] + width
    else
      local moved = false
      for k = last, n do
        local entry = log[k]
        if entry >= t + width then break end
        if k - upper(log, entry - width) + 1 + 1 > limit then
          t = entry + 1
          moved = true
          break
        end
      end
      if not moved then return t end
    end
  end
end

local windows = {}
local logs = {}
for i = 2, #KEYS do
  local limit = tonumber(ARGV[5 + (i - 2) * 2])
  local width = tonumber(ARGV[6 + (i - 2) * 2])
  windows[#windows + 1] = {limit, width}
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - width)
  local raw = redis.call('ZRANGE', KEYS[i], 0, -1, 'WITHSCORES')
  local log = {}
  for j = 2, #raw, 2 do log[#log + 1] = tonumber(raw[j]) end
  logs[#logs + 1] = log
end

local paused_until = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = math.max(now, paused_until)
while true do
  local moved = false
  for i = 1, #windows do
    local found = earliest_in_window(logs[i], windows[i][1], windows[i][2], caps[i], t)
    if found > t then
      t = found
      moved = true
    end
  end
  if not moved then break end
end

local wait = t - now
local admitted = wait <= max_wait
local at = t
if shadow then at = now end
if shadow or admitted then
  for i = 2, #KEYS do
    redis.call('ZADD', KEYS[i], at, member)
    -- keep the set while any entry can still matter: until the last one leaves its window
    redis.call('PEXPIREAT', KEYS[i], math.floor((at + windows[i - 1][2]) / 1000) + 1000)
    local log = logs[i - 1]
    log[#log + 1] = at
    table.sort(log)
  end
end

local result = {admitted and 1 or 0, wait, math.max(0, paused_until - now)}
for i = 1, #windows do
  local log, limit, width = logs[i], windows[i][1], windows[i][2]
  local first = upper(log, now - width)
  local used = #log - first + 1  -- reservations still to come count as used
  local reset = 0
  if used > 0 then reset = log[first] + width - now end
  result[#result + 1] = math.max(0, limit - used)
  result[#result + 1] = math.max(0, reset)
end
return result
