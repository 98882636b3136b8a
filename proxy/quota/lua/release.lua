-- Give back a reservation whose caller went away: remove the member from every window, but only
-- while its slot still lies in the future (a slot already used stays counted) -- unless ARGV[2]
-- is '1': the request was never sent (a batch refused whole), so even a slot reached is unused.
-- KEYS[1..n] the window sets   ARGV[1] member   ARGV[2] unused ('1' or '0')
local t0 = redis.call('TIME')
local now = tonumber(t0[1]) * 1000000 + tonumber(t0[2])
local removed = 0
for i = 1, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], ARGV[1])
  if score and (ARGV[2] == '1' or tonumber(score) > now) then
    removed = removed + redis.call('ZREM', KEYS[i], ARGV[1])
  end
end
return removed
