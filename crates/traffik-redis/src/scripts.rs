//! The Lua scripts: one per built-in strategy, plus the two of the generic compare-and-swap path.
//!
//! Every strategy script takes the storage key as `KEYS[1]` and
//! `ARGV = mode, now, min_ttl_ms, cost, <strategy parameters...>` where `mode` is `c` (consume),
//! `p` (peek: writes nothing) or `s` (stat: peek, and also return `now` and the raw state), and
//! an empty `now` means "read the server's `TIME`". It replies
//! `{kind, remaining, wait_us, reset_us}` (`kind`: 0 admit, 1 delay, 2 deny, 3 never), and in
//! stat mode `{kind, remaining, wait_us, reset_us, now, raw_state_or_nil}`.
//!
//! State is stored as a short string of decimal integers (microseconds and costs), written with
//! `SET ... PX` so that the state and its time to live change in one command. Lua 5.1 numbers
//! are doubles: every integer the scripts handle stays below 2^53 (timestamps in microseconds,
//! capacities capped at 2^50, costs clamped by the caller), so all of them are exact, and
//! `%.0f` prints them without exponent. The arithmetic is a line-by-line port of the Rust
//! strategies in `traffik::strategy`, including the IEEE double operations of the sliding
//! window counter in the same order.

use std::sync::LazyLock;

use redis::Script;

/// Shared prologue: arguments, clock, helpers.
const PROLOGUE: &str = r#"
local key = KEYS[1]
local mode = ARGV[1]
local now
if ARGV[2] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[2])
end
local min_ttl = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local MAX_TTL_MS = 1000000000000000

-- Exact floor division of non-negative integers below 2^53.
local function idiv(a, b)
  local q = math.floor(a / b)
  local r = a - q * b
  if r < 0 then
    q = q - 1
  elseif r >= b then
    q = q + 1
  end
  return q
end

local function pos(x)
  if x < 0 then return 0 end
  return x
end

local raw = redis.call('GET', key)

local function store(value, ttl_us)
  if mode ~= 'c' then return end
  local ms = idiv(ttl_us + 999, 1000)
  if ms < min_ttl then ms = min_ttl end
  if ms < 1 then ms = 1 end
  if ms > MAX_TTL_MS then ms = MAX_TTL_MS end
  redis.call('SET', key, value, 'PX', string.format('%.0f', ms))
end

local function finish(kind, remaining, wait, reset)
  if mode == 's' then
    return {kind, remaining, wait, reset, now, raw}
  end
  return {kind, remaining, wait, reset}
end
"#;

/// Fixed window. Extra ARGV: limit, period_us. State: `"window used"`.
const FIXED_WINDOW: &str = r#"
local limit = tonumber(ARGV[5])
local w = tonumber(ARGV[6])
if cost > limit then return finish(3, 0, 0, 0) end
local window = idiv(now, w)
local used = 0
if raw then
  local sw, su = string.match(raw, '^(%d+) (%d+)$')
  if sw then
    sw = tonumber(sw)
    su = tonumber(su)
    if sw >= window then
      window = sw
      used = su
    end
  end
end
local reset = pos((window + 1) * w - now)
if used + cost <= limit then
  used = used + cost
  store(string.format('%.0f %.0f', window, used), reset)
  return finish(0, limit - used, 0, reset)
end
return finish(2, pos(limit - used), reset, reset)
"#;

/// Sliding window counter. Extra ARGV: limit, period_us. State: `"window prev cur"`.
const SLIDING_COUNTER: &str = r#"
local limit = tonumber(ARGV[5])
local w = tonumber(ARGV[6])
if cost > limit then return finish(3, 0, 0, 0) end
local window = idiv(now, w)
local prev, cur = 0, 0
if raw then
  local a, b, c = string.match(raw, '^(%d+) (%d+) (%d+)$')
  if a then
    a = tonumber(a)
    b = tonumber(b)
    c = tonumber(c)
    if a >= window then
      window = a
      prev = b
      cur = c
    elseif a + 1 == window then
      prev = c
      cur = 0
    end
  end
end
local start = window * w
local elapsed = pos(now - start)
if elapsed > w - 1 then elapsed = w - 1 end

local function estimate(p, c, e)
  local weight = (w - e) / w
  return p * weight + c
end
local function fits(p, c, e)
  return estimate(p, c, e) + cost <= limit
end
local function first_fit(p, c, lo)
  local hi = w - 1
  while hi - lo > 1 do
    local mid = lo + math.floor((hi - lo) / 2)
    if fits(p, c, mid) then
      hi = mid
    else
      lo = mid
    end
  end
  return hi
end
local function floor_remaining(u)
  local left = limit - u
  if left <= 0 then return 0 end
  return math.floor(left)
end

local est = estimate(prev, cur, elapsed)
if est + cost <= limit then
  local ttl = pos(start + 2 * w - now)
  store(string.format('%.0f %.0f %.0f', window, prev, cur + cost), ttl)
  return finish(0, floor_remaining(est + cost), 0, ttl)
end
local target
if cur + cost <= limit and fits(prev, cur, w - 1) then
  target = start + first_fit(prev, cur, elapsed)
elseif fits(cur, 0, 0) then
  target = start + w
elseif fits(cur, 0, w - 1) then
  target = start + w + first_fit(cur, 0, 0)
else
  target = start + 2 * w
end
local reset
if cur > 0 then reset = start + 2 * w else reset = start + w end
return finish(2, floor_remaining(est), pos(target - now), pos(reset - now))
"#;

/// Sliding window log. Extra ARGV: limit, period_us. State: `"t:c t:c ..."`, oldest first.
const SLIDING_LOG: &str = r#"
local limit = tonumber(ARGV[5])
local w = tonumber(ARGV[6])
if cost > limit then return finish(3, 0, 0, 0) end
local ts, cs = {}, {}
if raw then
  for t, c in string.gmatch(raw, '(%d+):(%d+)') do
    ts[#ts + 1] = tonumber(t)
    cs[#cs + 1] = tonumber(c)
  end
end
local n = #ts
local first = 1
while first <= n and ts[first] + w <= now do first = first + 1 end
local used = 0
for i = first, n do used = used + cs[i] end
if used + cost <= limit then
  local parts = {}
  local placed = false
  local newest = now
  for i = first, n do
    local t, c = ts[i], cs[i]
    if not placed then
      if t == now then
        c = c + cost
        placed = true
      elseif t > now then
        parts[#parts + 1] = string.format('%.0f:%.0f', now, cost)
        placed = true
      end
    end
    parts[#parts + 1] = string.format('%.0f:%.0f', t, c)
    newest = t
  end
  if not placed then
    parts[#parts + 1] = string.format('%.0f:%.0f', now, cost)
    newest = now
  end
  local ttl = pos(newest + w - now)
  store(table.concat(parts, ' '), ttl)
  return finish(0, limit - used - cost, 0, ttl)
end
local need = used + cost - limit
local freed = 0
local target = now
for i = first, n do
  freed = freed + cs[i]
  if freed >= need then
    target = ts[i] + w
    break
  end
end
local reset = now
if n >= first then reset = ts[n] + w end
return finish(2, pos(limit - used), pos(target - now), pos(reset - now))
"#;

/// The meter family (token buckets, leaky buckets, GCRA). Extra ARGV: interval_us,
/// capacity_us, queue_us. State: `"tat"`.
const METER: &str = r#"
local t = tonumber(ARGV[5])
local cap = tonumber(ARGV[6])
local queue = tonumber(ARGV[7])
local inc = cost * t
if inc > cap then return finish(3, 0, 0, 0) end
local tat = 0
if raw then
  local v = string.match(raw, '^(%d+)$')
  if v then tat = tonumber(v) end
end
local level = pos(tat - now)
local fill = level + inc
if fill <= cap + queue then
  local base = tat
  if now > base then base = now end
  local nxt = base + inc
  local ttl = nxt - now
  store(string.format('%.0f', nxt), ttl)
  if fill <= cap then
    return finish(0, idiv(cap - fill, t), 0, ttl)
  end
  return finish(1, 0, fill - cap, ttl)
end
return finish(2, idiv(pos(cap - level), t), fill - cap - queue, level)
"#;

/// Generic path, read: `{now, value_or_nil}`. ARGV: now (empty = server `TIME`).
const READ: &str = r#"
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
return {now, redis.call('GET', KEYS[1])}
"#;

/// Generic path, compare-and-swap. ARGV: now (empty = server `TIME`), `1`/`0` (a value is
/// expected), expected value, new value, ttl_ms. Replies `{1}` when swapped, else
/// `{0, now, current_value_or_nil}`.
const CAS: &str = r#"
local cur = redis.call('GET', KEYS[1])
local expected = ARGV[2] == '1'
if (expected and cur == ARGV[3]) or ((not expected) and (not cur)) then
  redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
  return {1}
end
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
return {0, now, cur}
"#;

/// One script: its source (for the `EVAL` fallback) and SHA1 digest (for `EVALSHA`).
#[derive(Debug)]
pub(crate) struct Lua {
    pub(crate) hash: String,
    pub(crate) source: String,
}

impl Lua {
    fn new(source: String) -> Self {
        let hash = Script::new(&source).get_hash().to_owned();
        Lua { hash, source }
    }
}

/// Every script the backend runs.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) fixed_window: Lua,
    pub(crate) sliding_counter: Lua,
    pub(crate) sliding_log: Lua,
    pub(crate) meter: Lua,
    pub(crate) read: Lua,
    pub(crate) cas: Lua,
}

fn strategy_script(body: &str) -> String {
    let mut s = String::with_capacity(PROLOGUE.len() + body.len());
    s.push_str(PROLOGUE);
    s.push_str(body);
    s
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    fixed_window: Lua::new(strategy_script(FIXED_WINDOW)),
    sliding_counter: Lua::new(strategy_script(SLIDING_COUNTER)),
    sliding_log: Lua::new(strategy_script(SLIDING_LOG)),
    meter: Lua::new(strategy_script(METER)),
    read: Lua::new(READ.to_owned()),
    cas: Lua::new(CAS.to_owned()),
});
