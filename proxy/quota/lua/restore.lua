-- Write back admissions a replica decided on its own (from its local share, or mirrored from
-- this store before it went away), so that a store that came back empty counts them.
-- Times arrive as ages and are placed on this server's clock: an age was measured before the
-- call left the replica, so every entry lands a little later than it was sent (a window stays
-- full a little longer, never shorter). A member already in a set keeps its time (ZADD NX):
-- a store that kept its data counts nothing twice.
-- KEYS[1..n] one sorted set per window   ARGV[1..n] the windows' widths (µs)
-- ARGV[n+1..] member, age (µs) for each admission
-- Returns the number of entries added.
local t0 = redis.call('TIME')
local now = tonumber(t0[1]) * 1000000 + tonumber(t0[2])
local n = #KEYS
local function num(x) return string.format('%.0f', x) end
local added = 0
for i = 1, n do
  local width = tonumber(ARGV[i])
  local last = nil
  for j = n + 1, #ARGV, 2 do
    local at = now - tonumber(ARGV[j + 1])
    if at > now - width then
      added = added + redis.call('ZADD', KEYS[i], 'NX', num(at), ARGV[j])
      if last == nil or at > last then last = at end
    end
  end
  if last ~= nil then
    -- never shorten the expiry admit.lua set: only push it out to cover the latest entry
    local keep = math.floor((last + width - now) / 1000) + 1000
    if redis.call('PTTL', KEYS[i]) < keep then redis.call('PEXPIRE', KEYS[i], keep) end
  end
end
return added
