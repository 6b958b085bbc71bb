-- A batch of requests, answered in order as if each ran alone at `now`.
-- KEYS: the keys of every plan in the batch. ARGV[1]: now_ms; ARGV[2]: the number of plans P; then P plans,
-- "base|cooldown;kind,unit,limit,window,key;..." (kind "s" sliding / "f" fixed; unit "r" requests / "t"
-- tokens / "u" micro-dollars of a budget; window: the window's length (sliding) or its reset time in ms
-- (fixed); cooldown and key: indexes into KEYS after `base`, cooldown 0 for none); then one "plan,tokens,lease_requests,lease_tokens,usd" per
-- request (usd: its estimated cost in micro-dollars; never leased).
-- Returns nine integers per request: 1 and the tightest requests and tokens limits (index, used, reset_ms
-- each; index 0 for none), then the requests and tokens of the lease granted (0,0: none) when admitted;
-- 0,index,used,retry_ms when refused by check `index`; 0,0,0,ms_left when the deployment is parked;
-- -1,index when a fixed counter is missing (unused places are 0).
-- A lease is a block reserved for the asking worker to admit from by itself for under a second: counted now
-- like requests, but in the next second's bucket of per-minute windows, so it counts until every request
-- admitted from it has had its full minute (never early). Granted only where every limit has plenty of room.
local now = tonumber(ARGV[1])
local second = math.floor(now / 1000)
-- A per-minute window is a hash of one-second buckets plus two fields: 't', the sum of the live buckets,
-- and 'o', the oldest live bucket. A bucket counts until its end plus the window (never early). Each check
-- drops the buckets that stopped counting since the last one (one or two at a steady pace) instead of
-- reading them all: the cost is the same at 10 requests a minute as at 100,000.
local function rebuild(key, stale)
  local fields = redis.call('HGETALL', key)
  local total, oldest, gone = 0, nil, {}
  for j = 1, #fields, 2 do
    local bucket = tonumber(fields[j])
    if bucket then
      if bucket <= stale then
        gone[#gone + 1] = fields[j]
      else
        total = total + tonumber(fields[j + 1])
        if not oldest or bucket < oldest then oldest = bucket end
      end
    end
  end
  if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
  return total, oldest
end
-- A window as this batch sees it: read (and its expired buckets dropped) once, however many requests of the
-- batch count against it; what they add is written once, at the end.
local function load(key, w)
  local stale = math.floor((now - w) / 1000) - 1  -- buckets up to this second no longer count
  local state = redis.call('HMGET', key, 't', 'o')
  local stored_total, stored_oldest = tonumber(state[1]), tonumber(state[2])
  local total, oldest = stored_total, stored_oldest
  if not total or (oldest and stale - oldest > 120) then
    total, oldest = rebuild(key, stale)  -- new, or left long ago (or the clock jumped): read it whole
  elseif oldest and oldest <= stale then
    local gone = {}
    for bucket = oldest, stale do
      local count = redis.call('HGET', key, bucket)
      if count then
        total = total - tonumber(count)
        gone[#gone + 1] = bucket
      end
    end
    if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
    oldest = nil
    if total > 0 then
      for bucket = stale + 1, second + 1 do
        if redis.call('HEXISTS', key, bucket) == 1 then oldest = bucket break end
      end
    end
  end
  if total <= 0 then total, oldest = 0, nil end
  return {total = total, oldest = oldest, stored_total = stored_total, stored_oldest = stored_oldest,
          w = w, added = 0, ahead = 0, counted = false}
end
local windows, counters, parked = {}, {}, {}
-- When enough of a window's oldest buckets stop counting for `cost` more to fit.
local function retry_in(key, win, cost, limit)
  local need, freed = win.total + cost - limit, 0
  if win.oldest then
    for bucket = win.oldest, second + 1 do
      freed = freed + tonumber(redis.call('HGET', key, bucket) or '0')
      -- Counted by this batch, not written yet.
      if bucket == second then freed = freed + win.added elseif bucket == second + 1 then freed = freed + win.ahead end
      if freed >= need then return (bucket + 1) * 1000 + win.w - now end
    end
  end
  return win.w
end
-- What one check counts: `r` for a requests limit, `t` for a tokens limit, `u` for a budget.
local function cost_of(unit, r, t, u)
  if unit == 't' then return t elseif unit == 'u' then return u end
  return r
end
-- Count `r` against each requests limit of a plan, `t` against each tokens limit and `u` against each budget:
-- in this second's bucket of per-minute windows (a request), or in the next second's (a lease).
local function count(plan, r, t, u, ahead)
  local checks = plan[2]
  local bucket = ahead and second + 1 or second
  for i = 1, plan[3] do
    local check = checks[i]
    local k, cost = check[5], cost_of(check[2], r, t, u)
    if check[1] then
      local win = windows[k]
      win.total = win.total + cost
      if ahead then win.ahead = win.ahead + cost else win.added = win.added + cost end
      win.counted = true
      if not win.oldest or bucket < win.oldest then win.oldest = bucket end
    else
      local counter = counters[k]
      counter.value = counter.value + cost
      counter.added = counter.added + cost
    end
  end
end
-- One request: seven numbers (see above), returned as values, not a table (the client's reply is built from
-- them directly; a table per request costs as much as the checks).
local function answer(plan, tokens, usd)
  local cool = plan[1]
  if cool then
    if parked[cool] == nil then parked[cool] = tonumber(redis.call('GET', cool) or '0') end
    -- The key holds "until" in our clock (which tests can move), not Redis' own.
    if parked[cool] > now then return 0, 0, 0, parked[cool] - now, 0, 0, 0 end
  end
  local checks, n = plan[2], plan[3]
  -- Per unit, the check with the least room: its number, what it had used, its reset, its room.
  local ri, ru, rr, rroom, ti, tu, tr, troom = 0, 0, 0, 0, 0, 0, 0, 0
  for i = 1, n do
    local check = checks[i]
    local sliding, unit, limit, w, k = check[1], check[2], check[3], check[4], check[5]
    local cost = cost_of(unit, 1, tokens, usd)
    local used, reset
    if sliding then
      local win = windows[k]
      if not win then win = load(k, w) windows[k] = win end
      used = win.total
      if used + cost > limit then return 0, i, used, retry_in(k, win, cost, limit), 0, 0, 0 end
      reset = 0
      if win.oldest then reset = (win.oldest + 1) * 1000 + w - now end
    else
      local counter = counters[k]
      if counter == nil then
        local v = redis.call('GET', k)
        counter = v and {value = tonumber(v), added = 0} or false
        counters[k] = counter
      end
      if not counter then return -1, i, 0, 0, 0, 0, 0 end
      used = counter.value
      if used + cost > limit then return 0, i, used, w - now, 0, 0, 0 end
      reset = w - now
    end
    if unit == 't' then
      if ti == 0 or limit - used < troom then ti, tu, tr, troom = i, used, reset, limit - used end
    elseif unit == 'r' and (ri == 0 or limit - used < rroom) then
      ri, ru, rr, rroom = i, used, reset, limit - used
    end
  end
  count(plan, 1, tokens, usd, false)  -- every limit has room: count the request in all of them
  return 1, ri, ru, rr, ti, tu, tr
end
-- After a request was counted: reserve up to `want_r` more requests and `want_t` tokens (scaled down together
-- so that each limit gives at most a 16th of the room it has left); nothing if that is under two requests.
-- The 16th keeps what workers hold unused small next to what is left for the others, and a limit nearly used
-- up (or a small one: the free tiers' 2-18 a minute) is always checked request by request.
local function lease(plan, want_r, want_t)
  local checks, n = plan[2], plan[3]
  local share = 1
  for i = 1, n do
    local check = checks[i]
    local k, limit = check[5], check[3]
    local cost = cost_of(check[2], want_r, want_t, 0)  -- budgets are never leased
    if cost > 0 then
      local used = check[1] and windows[k].total or counters[k].value
      local s = (limit - used) / 16 / cost
      if s < share then share = s end
    end
  end
  local r = math.floor(want_r * share)
  if r < 2 then return 0, 0 end
  local t = math.floor(want_t * share)
  count(plan, r, t, 0, true)
  return r, t
end
local plans = {}
local nplans = tonumber(ARGV[2])
for p = 1, nplans do
  local base, cool, rest = string.match(ARGV[2 + p], '^(%d+)|(%d+)(.*)$')
  base, cool = tonumber(base), tonumber(cool)
  local checks = {}
  for kind, unit, limit, w, k in string.gmatch(rest, '(%a),(%a),(%d+),(%d+),(%d+)') do
    -- By name: plans that share a counter (a key's limits, a pool's) share its state within the batch.
    checks[#checks + 1] = {kind == 's', unit, tonumber(limit), tonumber(w), KEYS[base + tonumber(k)]}
  end
  plans[p] = {cool > 0 and KEYS[base + cool] or false, checks, #checks}
end
-- Nine integers per request in one flat array: Redis sends integers as they are, where turning them into
-- text here (or nesting arrays for the client to walk) would cost more than the checks themselves.
local replies, m = {}, 0
for r = 3 + nplans, #ARGV do
  local p, tokens, want_r, want_t, usd = string.match(ARGV[r], '(%d+),(%d+),(%d+),(%d+),(%d+)')
  local plan = plans[tonumber(p)]
  local a, b, c, d, e, f, g = answer(plan, tonumber(tokens), tonumber(usd))
  local lr, lt = 0, 0
  if a == 1 and want_r ~= '0' then lr, lt = lease(plan, tonumber(want_r), tonumber(want_t)) end
  replies[m + 1], replies[m + 2], replies[m + 3], replies[m + 4] = a, b, c, d
  replies[m + 5], replies[m + 6], replies[m + 7], replies[m + 8], replies[m + 9] = e, f, g, lr, lt
  m = m + 9
end
for key, win in pairs(windows) do
  if win.counted then
    -- The key outlives its newest bucket's window: refreshed when a second's bucket is started.
    local started = false
    if win.added > 0 or win.ahead == 0 then started = redis.call('HINCRBY', key, second, win.added) == win.added end
    if win.ahead > 0 then
      started = redis.call('HINCRBY', key, second + 1, win.ahead) == win.ahead or started
    end
    if started then redis.call('PEXPIRE', key, win.w + (win.ahead > 0 and 3000 or 2000)) end
    redis.call('HSET', key, 't', win.total, 'o', win.oldest)
  elseif win.total ~= win.stored_total or win.oldest ~= win.stored_oldest then
    -- Expired buckets were dropped but nothing was counted: keep the total and oldest bucket in step.
    if win.oldest then redis.call('HSET', key, 't', win.total, 'o', win.oldest) else
      redis.call('DEL', key)  -- nothing counts any more (and a key is never left without its expiry)
    end
  end
end
for key, counter in pairs(counters) do
  if counter and counter.added > 0 then redis.call('INCRBY', key, counter.added) end
end
return replies
