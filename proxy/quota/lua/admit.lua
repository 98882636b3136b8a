-- One admission for every window of a quota, atomically, on the Redis server's clock.
-- A port of proxy/quota/schedule.py (earliest, earliest_in_window, headroom) that works on the
-- sorted sets by rank instead of reading them whole: every step is a ZCOUNT or a one-element
-- ZRANGE (O(log n)), and only the reservations still to come are read, so a full hourly window
-- costs no more than an empty one. Times are integer microseconds.
--
-- KEYS[1]      the quota's pause key (a time until which nothing is admitted)
-- KEYS[2..n+1] one sorted set per window: member = admission id, score = admission time
-- ARGV[1] member   ARGV[2] max_wait   ARGV[3] cap per window, as a list "c1,c2,…"
-- ARGV[4] shadow (1 = log the admission now, whatever the decision)
-- ARGV[5..4+2n]  limit, width for each of the n windows
-- ARGV[5+2n] now (optional): the time to decide at; absent or empty means the server's TIME.
--            Given only by tests that replay schedule.py's arithmetic at chosen times.
-- ARGV[6+2n] not_before (optional): µs from now before which no slot is given
-- Returns {admitted, wait, paused, turn, remaining1, reset1, remaining2, reset2, …}
-- turn > 0: deferred by the fair share (proxy/quota/fair.py, ported by `deferred` below): no
-- slot taken, the caller may ask again in turn µs.

local n = #KEYS - 1
local now
if ARGV[5 + 2 * n] and ARGV[5 + 2 * n] ~= '' then
  now = tonumber(ARGV[5 + 2 * n])
else
  local t0 = redis.call('TIME')
  now = tonumber(t0[1]) * 1000000 + tonumber(t0[2])
end
local not_before = tonumber(ARGV[6 + 2 * n] or '0') or 0
local member = ARGV[1]
local max_wait = tonumber(ARGV[2])
local shadow = ARGV[4] == '1'

local caps = {}
for c in string.gmatch(ARGV[3], '[^,]+') do caps[#caps + 1] = tonumber(c) end

-- Lua 5.1 prints numbers with 14 significant digits: times need all 16.
local function num(x) return string.format('%.0f', x) end

-- entries with a score at or before x: the 0-based rank of the first entry after x
local function upto(key, x) return redis.call('ZCOUNT', key, '-inf', num(x)) end
local function score_at(key, rank)
  return tonumber(redis.call('ZRANGE', key, rank, rank, 'WITHSCORES')[2])
end

local MAX_STEPS = 8  -- as schedule.MAX_STEPS

local function earliest_in_window(key, limit, width, cap, t)
  local steps = 0
  while true do
    steps = steps + 1
    if steps > MAX_STEPS then
      -- stop looking for a gap between reservations: the tail of the log is always safe
      local tail = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
      if tail and tonumber(tail) > t then t = tonumber(tail) end
    end
    local first = upto(key, t - width)
    local last = upto(key, t)  -- ranks first .. last-1 lie in (t - width, t]
    if last - first + 1 > cap then
      -- wait until enough of the oldest entries in the window have left
      t = score_at(key, last - cap) + width
    else
      local blocked = nil
      local future = redis.call(
        'ZRANGEBYSCORE', key, '(' .. num(t), '(' .. num(t + width), 'WITHSCORES')
      for j = 2, #future, 2 do
        local entry = tonumber(future[j])
        if upto(key, entry) - upto(key, entry - width) + 1 > limit then
          blocked = entry  -- the window ending at this entry is full: go past it
          break
        end
      end
      if blocked == nil then return t end
      t = blocked + 1
    end
  end
end

local windows = {}
for i = 2, #KEYS do
  local limit = tonumber(ARGV[5 + (i - 2) * 2])
  local width = tonumber(ARGV[6 + (i - 2) * 2])
  windows[#windows + 1] = {KEYS[i], limit, width}
  -- entries at or before now - width are outside every window that ends from now on
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', num(now - width))
end

local paused_until = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = math.max(now + not_before, paused_until)
while true do
  local moved = false
  for i = 1, #windows do
    local w = windows[i]
    local found = earliest_in_window(w[1], w[2], w[3], caps[i], t)
    if found > t then
      t = found
      moved = true
    end
  end
  if not moved then break end
end

-- The fair share (least used first; proxy/quota/fair.py's `deferred`): a member "<tag>~<id>"
-- names its caller; only callers of its priority (the tag's first letter) count. A caller that
-- holds a reservation still to come, and has as many entries within the narrowest window
-- (reservations included) as the fewest another caller has, takes no slot now: it asks again
-- when its earliest reservation is due. A caller that holds none waits while another caller
-- that has used less holds one (until the earliest such reservation), or was admitted within
-- the grace (the narrowest width / GRACE_SHARE) while the narrowest window's free slots are no
-- more than such callers may take: each PACE times as many as it was admitted within the grace,
-- at most what it lacks to catch up (until its grace runs out). Every admission is in every window's set, so the
-- narrowest window's set holds every entry of it.
local GRACE_SHARE = 50  -- as fair.GRACE_SHARE
local PACE = 2  -- as fair.PACE
local function deferred(caller)
  local narrow = windows[1]
  for i = 2, #windows do
    if windows[i][3] < narrow[3] then narrow = windows[i] end
  end
  local since = '(' .. num(now - narrow[3])
  local grace = math.floor(narrow[3] / GRACE_SHARE)
  local free = narrow[2] - redis.call('ZCOUNT', narrow[1], since, '+inf')
  local ahead = redis.call('ZCOUNT', narrow[1], '(' .. num(now), '+inf')
  local recent = redis.call('ZCOUNT', narrow[1], '(' .. num(now - grace), '+inf')
  -- As MemoryStore: with no reservation, and more free slots than PACE times what was admitted
  -- within the grace (the most the callers on their way back may take), nobody is deferred.
  if ahead == 0 and free > PACE * recent then return nil end
  local entries = redis.call('ZRANGEBYSCORE', narrow[1], since, '+inf', 'WITHSCORES')
  local used, due, latest, fresh = {}, {}, {}, {}
  local prefix = string.sub(caller, 1, 1)
  for j = 1, #entries, 2 do
    local other = string.match(entries[j], '^([^~]+)~')
    if other and string.sub(other, 1, 1) == prefix then
      used[other] = (used[other] or 0) + 1
      local slot = tonumber(entries[j + 1])
      if slot > now then
        if due[other] == nil or slot < due[other] then due[other] = slot end
      elseif slot > now - grace then
        fresh[other] = (fresh[other] or 0) + 1
        if latest[other] == nil or slot > latest[other] then latest[other] = slot end
      end
    end
  end
  local count = used[caller] or 0
  local mine = due[caller]
  if mine ~= nil then
    local fewest = nil
    for other, k in pairs(used) do
      if other ~= caller and (fewest == nil or k < fewest) then fewest = k end
    end
    if fewest == nil or count < fewest then return nil end
    return mine
  end
  local turn, short, back = nil, 0, nil
  for other, k in pairs(used) do
    if k < count then
      local at = due[other]
      if at ~= nil then
        if turn == nil or at < turn then turn = at end
      elseif fresh[other] ~= nil then
        short = short + math.min(count - k, PACE * fresh[other])
        if back == nil or latest[other] + grace < back then back = latest[other] + grace end
      end
    end
  end
  if back ~= nil and free <= short and (turn == nil or back < turn) then turn = back end
  return turn
end

local wait = t - now
local admitted = wait <= max_wait
local turn = 0
local caller = string.match(member, '^([^~]+)~')
if admitted and caller and not shadow then
  local due = deferred(caller)
  if due ~= nil then
    admitted = false
    turn = due - now
  end
end
local at = t
if shadow then at = now end
if shadow or admitted then
  for i = 1, #windows do
    local w = windows[i]
    redis.call('ZADD', w[1], num(at), member)
    -- Keep the set while any entry can still matter: until the last one leaves its window.
    -- Only ever pushed out (a reservation further ahead may be in the set already), and set
    -- relative to now, which a test may give far from the server's own clock.
    local keep = math.floor((at + w[3] - now) / 1000) + 1000
    if redis.call('PTTL', w[1]) < keep then redis.call('PEXPIRE', w[1], keep) end
  end
end

local result = {admitted and 1 or 0, wait, math.max(0, paused_until - now), turn}
for i = 1, #windows do
  local key, limit, width = windows[i][1], windows[i][2], windows[i][3]
  local first = upto(key, now - width)
  local used = redis.call('ZCARD', key) - first  -- reservations still to come count as used
  local reset = 0
  if used > 0 then reset = score_at(key, first) + width - now end
  result[#result + 1] = math.max(0, limit - used)
  result[#result + 1] = math.max(0, reset)
end
return result
