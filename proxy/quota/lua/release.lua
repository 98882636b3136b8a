-- Give back a reservation whose caller went away: remove the member from every window, but only
-- while its slot still lies in the future (a slot already used stays counted).
-- KEYS[1..n] the window sets   ARGV[1] member
local t0 = redis.call('TIME')
local now = tonumber(t0[1]) * 1000000 + tonumber(t0[2])
local removed = 0
for i = 1, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], ARGV[1])
  if score and tonumber(score) > now then
    removed = removed + redis.call('ZREM', KEYS[i], ARGV[1])
  end
end
return removed
