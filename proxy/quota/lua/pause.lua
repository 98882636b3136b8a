-- Pause a quota for every replica: nothing is admitted before now + ARGV[1] µs. A longer pause
-- already in place is kept. Returns the µs the pause still lasts.
-- KEYS[1] the pause key   ARGV[1] duration in µs
local t0 = redis.call('TIME')
local now = tonumber(t0[1]) * 1000000 + tonumber(t0[2])
local until_ = now + tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > until_ then until_ = current end
redis.call('SET', KEYS[1], string.format('%d', until_), 'PXAT', math.floor(until_ / 1000) + 1000)
return until_ - now
