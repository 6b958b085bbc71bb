-- Token corrections, once calls' real usage is known, in one call per batch.
-- KEYS: one per correction (a key may repeat). ARGV[1]: "kind,bucket,delta;..." packed in one argument.
-- A per-minute window is corrected in the second it was counted in, if that second still counts.
local i = 0
for kind, bucket, delta in string.gmatch(ARGV[1], '(%a),(%d+),(-?%d+)') do
  i = i + 1
  local key = KEYS[i]
  if kind == 's' then
    if redis.call('HEXISTS', key, bucket) == 1 then
      redis.call('HINCRBY', key, bucket, delta)
      -- The live total includes this bucket until it is dropped (a hash without one is rebuilt when read).
      if redis.call('HEXISTS', key, 't') == 1 then redis.call('HINCRBY', key, 't', delta) end
    end
  elseif redis.call('EXISTS', key) == 1 then
    redis.call('INCRBY', key, delta)
  end
end
return i
