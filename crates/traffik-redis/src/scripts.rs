//! The Lua scripts: one per built-in strategy, one for a group of them, plus the two of the
//! generic compare-and-swap path.
//!
//! Every strategy script takes the storage key as `KEYS[1]` and
//! `ARGV = mode, now, min_ttl_ms, cost, <strategy parameters...>` where `mode` is `c` (consume),
//! `p` (peek: writes nothing), `s` (stat: peek, and also return `now` and the raw state) or `r`
//! (refund), and an empty `now` means "read the server's `TIME`". Replies:
//!
//! * `c` and `p`: `{kind, remaining, wait_us, reset_us, lease, at}` (`kind`: 0 admit, 1 delay,
//!   2 deny, 3 never; `lease`: the concurrency script's new lease stamp, else 0; `at`: the
//!   server's time the script decided at when it read `TIME`, 0 when the client sent `now`).
//!   The backend turns `at` into `Verdict::at_us`, which names an admission for its refund: a
//!   window strategy's refund must name the window on the clock that counted it.
//! * `s`: `{kind, remaining, wait_us, reset_us, now, raw_state_or_nil}`.
//! * `r` (every script but the concurrency one): one more ARGV after the strategy's
//!   parameters, the admission's `charged_at_us`. The script runs the strategy's
//!   `Strategy::refund`, line by line, on the stored state at `now`, writes the new state (with
//!   its time to live, at least `min_ttl_ms`, as a decision's) only when the Rust refund would
//!   return `Some`, and replies `{changed}` (1 or 0). The meters and the cost-aware bucket
//!   ignore `charged_at_us`, as their Rust refunds do. The refund branch is the first thing a
//!   script tests after its head: a decision pays one comparison for it (and one in the reply).
//!
//! The concurrency script releases and renews leases instead (its `op` argument, below).
//!
//! State is stored as a short string of decimal integers (microseconds and costs), written with
//! `SET ... PX` so that the state and its time to live change in one command. Lua 5.1 numbers
//! are doubles: every integer the scripts handle stays below 2^53 (timestamps in microseconds,
//! capacities capped at 2^50, costs clamped by the caller), so all of them are exact. The
//! arithmetic is a line-by-line port of the Rust strategies in `traffik::strategy`, including
//! the IEEE double operations of the sliding window counter in the same order.
//!
//! Each script is `PROLOGUE .. head .. if mode == 'r' then refund else decision end .. WRITE ..
//! REPLY` (the head of the window scripts is `WINDOW`; the others have none) and runs on every
//! decision, so it is written for the server's time: no closures on the common paths (the
//! floor divisions are inlined; the refunds, off the common path, use closures), decimal
//! strings become numbers through arithmetic (`s * 1`: the same conversion as `tonumber`,
//! without the function call), numbers are printed with `%d` (Redis' Lua prints it through a
//! 64-bit C `long`: the same digits as `%.0f` for every integer below 2^63, at half the cost;
//! the values written stay below 2^54), and only consume mode (and a refund that changes
//! something) builds a new state string. When a sliding log hit is appended, or
//! added to the newest entry, the text of the other live entries is kept as it is rather than
//! printed again (the scripts always write it canonically, so the result is the same string).

use std::sync::LazyLock;

use redis::Script;

/// Shared prologue: arguments, clock, current state, and the verdict the body fills in.
const PROLOGUE: &str = r#"
local key = KEYS[1]
local mode = ARGV[1]
local now, at = ARGV[2], 0
if now == '' then
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
  at = now
else
  now = now * 1
end
local cost = ARGV[4] * 1
local raw = redis.call('GET', key)
-- Set by the body: the verdict (default: never), and, in consume mode only, the new state
-- string and its time to live in microseconds.
local kind, remaining, wait, reset = 3, 0, 0, 0
local state, ttl
"#;

/// Declarations the concurrency script's body needs beyond the prologue's.
const CONCURRENCY_HEAD: &str = "local lease, changed = 0, 0\n";

/// Shared epilogue, first half: writes the new state, if any (decisions in consume mode, a
/// refund that changed something).
const WRITE: &str = r#"
if state then
  -- ms = ceil(ttl / 1000), an exact floor division of integers below 2^53.
  local ms = math.floor((ttl + 999) / 1000)
  local r = ttl + 999 - ms * 1000
  if r < 0 then
    ms = ms - 1
  elseif r >= 1000 then
    ms = ms + 1
  end
  local min_ttl = ARGV[3] * 1
  if ms < min_ttl then ms = min_ttl end
  if ms < 1 then ms = 1 end
  if ms > 1000000000000000 then ms = 1000000000000000 end
  redis.call('SET', key, state, 'PX', string.format('%d', ms))
end
"#;

/// Shared epilogue, second half: the reply. A refund changed something iff it wrote a state.
const REPLY: &str = r#"
if mode == 's' then
  return {kind, remaining, wait, reset, now, raw}
elseif mode == 'r' then
  if state then return {1} end
  return {0}
end
return {kind, remaining, wait, reset, 0, at}
"#;

/// The concurrency script's reply: a decision carries its lease; a release or renewal replies
/// whether anything changed.
const CONCURRENCY_REPLY: &str = r#"
if mode == 's' then
  return {kind, remaining, wait, reset, now, raw}
elseif op ~= '' then
  return {changed}
end
return {kind, remaining, wait, reset, lease, at}
"#;

/// Shared head of the two window scripts: ARGV limit and period, and the start of the window
/// `now` falls in (an exact floor division of integers below 2^53).
const WINDOW: &str = r#"
local limit = ARGV[5] * 1
local w = ARGV[6] * 1
local start = math.floor(now / w)
local r = now - start * w
if r < 0 then
  start = start - 1
elseif r >= w then
  start = start + 1
end
start = start * w
"#;

/// Fixed window (after [`WINDOW`]). State: `"last used period"`, the time of the latest
/// admission, the cost admitted in its window and the period it was counted under. The usage
/// counts iff the period is the same and the latest admission is in the current window; one up
/// to a period ahead of `now` counts against its own window.
const FIXED_WINDOW: &str = r#"
if cost <= limit then
  local used, last, wend = 0, now, start + w
  if raw then
    local sl, su, sp = string.match(raw, '^(%d+) (%d+) (%d+)$')
    if sl then
      sl = sl * 1
      if sp * 1 == w and sl >= start and sl < now + w then
        used = su * 1
        if sl > now then
          last = sl
          if sl >= wend then wend = wend + w end
        end
      end
    end
  end
  reset = wend - now
  if used + cost <= limit then
    used = used + cost
    kind, remaining = 0, limit - used
    if mode == 'c' then
      state, ttl = string.format('%d %d %d', last, used, w), reset
    end
  else
    kind, remaining, wait = 2, limit - used, reset
    if remaining < 0 then remaining = 0 end
  end
end
"#;

/// Sliding window counter (after [`WINDOW`]). State: `"last prev cur period"`, the time of the
/// latest admission, the cost admitted in the window before its window and in its window, and
/// the period they were counted under (another period reads as absent). The counts are seen
/// from `at`: the current window's start, or the next one's for a latest admission up to a
/// period ahead of `now`.
const SLIDING_COUNTER: &str = r#"
if cost <= limit then
  local prev, cur, at, last = 0, 0, start, now
  if raw then
    local a, b, c, d = string.match(raw, '^(%d+) (%d+) (%d+) (%d+)$')
    if a then
      a = a * 1
      if d * 1 == w and a < now + w then
        local latest = math.floor(a / w)
        local q = a - latest * w
        if q < 0 then
          latest = latest - 1
        elseif q >= w then
          latest = latest + 1
        end
        latest = latest * w
        if latest >= start then
          at, prev, cur = latest, b * 1, c * 1
          if a > now then last = a end
        elseif latest + w == start then
          prev = c * 1
        end
      end
    end
  end
  local elapsed = now - at
  if elapsed < 0 then elapsed = 0 end
  if elapsed > w - 1 then elapsed = w - 1 end
  -- The estimate at `e` µs into the window: prev * weight + cur, weight = (w - e) / w.
  local est = prev * ((w - elapsed) / w) + cur
  if est + cost <= limit then
    kind, reset = 0, at + 2 * w - now
    if reset < 0 then reset = 0 end
    remaining = limit - (est + cost)
    if remaining <= 0 then remaining = 0 else remaining = math.floor(remaining) end
    if mode == 'c' then
      state, ttl = string.format('%d %d %d %d', last, prev, cur + cost, w), reset
    end
  else
    local function fits(p, c, e)
      return p * ((w - e) / w) + c + cost <= limit
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
    local target
    if cur + cost <= limit and fits(prev, cur, w - 1) then
      target = at + first_fit(prev, cur, elapsed)
    elseif fits(cur, 0, 0) then
      target = at + w
    elseif fits(cur, 0, w - 1) then
      target = at + w + first_fit(cur, 0, 0)
    else
      target = at + 2 * w
    end
    kind, remaining, wait = 2, limit - est, target - now
    if remaining <= 0 then remaining = 0 else remaining = math.floor(remaining) end
    if wait < 0 then wait = 0 end
    if cur > 0 then reset = at + 2 * w - now else reset = at + w - now end
    if reset < 0 then reset = 0 end
  end
end
"#;

/// Quota with rollover (after [`WINDOW`]). Extra ARGV: the rollover cap R (after limit and
/// period). State: `"start used carried period"`, the start of the period the usage counts in,
/// the cost admitted in it, the rollover it started with and the period's length. Absent state,
/// another period, a start a period or more ahead of now, or a period before the previous one
/// read as an idle spell (rollover R); the previous period rolls over
/// `min(R, L + min(carried, R) - used)`.
const QUOTA_ROLLOVER: &str = r#"
local cap = ARGV[7] * 1
if cost <= limit + cap then
  local used, carried = 0, cap
  if raw then
    local ss, su, sc, sp = string.match(raw, '^(%d+) (%d+) (%d+) (%d+)$')
    if ss then
      ss = ss * 1
      if sp * 1 == w and ss < now + w then
        sc = sc * 1
        if sc > cap then sc = cap end
        if ss >= start then
          start, used, carried = ss, su * 1, sc
        elseif ss + w == start then
          local unused = limit + sc - su * 1
          if unused < 0 then unused = 0 end
          if unused < cap then carried = unused end
        end
      end
    end
  end
  local allowance = limit + carried
  reset = start + w - now
  if used + cost <= allowance then
    used = used + cost
    kind, remaining = 0, allowance - used
    if mode == 'c' then
      state, ttl = string.format('%d %d %d %d', start, used, carried, w), reset + w
    end
  else
    remaining = allowance - used
    if remaining < 0 then remaining = 0 end
    local roll = remaining
    if roll > cap then roll = cap end
    kind, wait = 2, reset
    if cost > limit + roll then wait = reset + w end
  end
end
"#;

/// Cost-aware token bucket. Extra ARGV: interval_us T, capacity_us, period_us, and
/// `"reference_milli max_slowdown_milli window"`. State: `"tat avg prev"`, the theoretical
/// arrival time, the average admitted cost in thousandths and the average before the latest
/// admission. A full bucket (level 0) starts the average at the reference; a level more than a
/// period beyond four capacities is forgiven. Every division is an exact floor division of
/// integers below 2^53.
const COST_AWARE: &str = r#"
local t = ARGV[5] * 1
local cap = ARGV[6] * 1
local ref, top, n = string.match(ARGV[8], '^(%d+) (%d+) (%d+)$')
ref, top, n = ref * 1, top * 1, n * 1
local need = cost * t
if need <= cap then
  local function fdiv(a, b)
    local q = math.floor(a / b)
    local r = a - q * b
    if r < 0 then
      q = q - 1
    elseif r >= b then
      q = q + 1
    end
    return q
  end
  local tat, level, avg = now, 0, ref
  if raw then
    local st, sa = string.match(raw, '^(%d+) (%d+) %d+$')
    if st then
      st = st * 1
      local l = st - now
      if l > 0 and l <= cap * 4 + ARGV[7] * 1 then tat, level, avg = st, l, sa * 1 end
    end
  end
  if level + need <= cap then
    local nxt = fdiv(avg * (n - 1) + cost * 2000, n + 1)
    local f = fdiv(nxt * 1000, ref)
    if f < 1000 then f = 1000 end
    if f > top then f = top end
    local q = fdiv(t, 1000)
    local step = q * f + fdiv((t - q * 1000) * f + 999, 1000)
    local at = tat
    if now > at then at = now end
    at = at + cost * step
    reset = at - now
    kind, remaining = 0, 0
    if reset < cap then remaining = fdiv(cap - reset, t) end
    if mode == 'c' then
      state, ttl = string.format('%d %d %d', at, nxt, avg), reset
    end
  else
    kind, wait, reset = 2, level + need - cap, level
    remaining = 0
    if level < cap then remaining = fdiv(cap - level, t) end
  end
end
"#;

/// Sliding window log. Extra ARGV: limit, period_us. State: `"period/t:c t:c ..."`, the period
/// the log was written under and its entries, oldest first. An entry counts while it is within
/// the shorter of the two periods (`horizon`); entries a period or more ahead of now are not
/// believed. State without a period (earlier versions) reads as empty.
const SLIDING_LOG: &str = r#"
local limit = ARGV[5] * 1
local w = ARGV[6] * 1
if cost <= limit then
  -- Entry i: timestamp ts[i], cost cs[i]. Entries before `first` have expired; the text of
  -- entry `first` starts at `fp` in `body` (the entries' text), that of entry n at `lp`;
  -- `cut`: the text has entries a period or more ahead, left out.
  local ts, cs, n, first, fp, lp, cut, horizon, body = {}, {}, 0, nil, nil, nil, false, w, ''
  if raw then
    local pw, from = string.match(raw, '^(%d+)/()')
    if pw then
      pw = pw * 1
      if pw < horizon then horizon = pw end
      body = string.sub(raw, from)
      for p, t, c in string.gmatch(body, '()(%d+):(%d+)') do
        t = t * 1
        if t >= now + w then
          cut = true
          break
        end
        n = n + 1
        ts[n] = t
        cs[n] = c * 1
        if not first and t + horizon > now then first, fp = n, p end
        lp = p
      end
    end
  end
  if not first then first = n + 1 end
  local used = 0
  for i = first, n do used = used + cs[i] end
  if used + cost <= limit then
    -- The hit joins the first live entry at or after now: j > n when there is none.
    local j = first
    while j <= n and ts[j] < now do j = j + 1 end
    local newest = now
    if j <= n then newest = ts[n] end
    kind, remaining, reset = 0, limit - used - cost, newest + w - now
    if reset < 0 then reset = 0 end
    if mode == 'c' then
      local head = string.format('%d/', w)
      if j > n and not cut then
        -- Appended: the live entries keep their text.
        state = string.format('%d:%d', now, cost)
        if first <= n then state = string.sub(body, fp) .. ' ' .. state end
        state = head .. state
      elseif j == n and ts[n] == now then
        -- Added to the newest entry.
        state = head .. string.sub(body, fp, lp - 1) .. string.format('%d:%d', now, cs[n] + cost)
      else
        local parts, k = {}, 0
        for i = first, n do
          local c = cs[i]
          if i == j then
            if ts[i] == now then
              c = c + cost
            else
              k = k + 1
              parts[k] = string.format('%d:%d', now, cost)
            end
          end
          k = k + 1
          parts[k] = string.format('%d:%d', ts[i], c)
        end
        if j > n then parts[k + 1] = string.format('%d:%d', now, cost) end
        state = head .. table.concat(parts, ' ')
      end
      ttl = reset
    end
  else
    local need = used + cost - limit
    local freed = 0
    local target = now
    for i = first, n do
      freed = freed + cs[i]
      if freed >= need then
        target = ts[i] + horizon
        break
      end
    end
    local last = now
    if n >= first then last = ts[n] + horizon end
    kind, remaining, wait, reset = 2, limit - used, target - now, last - now
    if remaining < 0 then remaining = 0 end
    if wait < 0 then wait = 0 end
    if reset < 0 then reset = 0 end
  end
end
"#;

/// The meter family (token buckets, leaky buckets, GCRA). Extra ARGV: interval_us,
/// capacity_us, queue_us, period_us. State: `"tat"`. A level more than a period beyond
/// `capacity + queue` is forgiven (written under a slower rate, or corrupt).
const METER: &str = r#"
local t = ARGV[5] * 1
local cap = ARGV[6] * 1
local queue = ARGV[7] * 1
local inc = cost * t
if inc <= cap then
  local tat = 0
  if raw and string.find(raw, '^%d+$') then tat = raw * 1 end
  local level = tat - now
  if level < 0 then level = 0 end
  if level > cap + queue + ARGV[8] * 1 then tat, level = 0, 0 end
  local fill = level + inc
  -- Free capacity in µs, shown as whole units of cost.
  local free
  if fill <= cap + queue then
    local nxt = tat
    if now > nxt then nxt = now end
    nxt = nxt + inc
    reset = nxt - now
    if fill <= cap then
      kind, free = 0, cap - fill
    else
      kind, wait = 1, fill - cap
    end
    if mode == 'c' then
      state, ttl = string.format('%d', nxt), reset
    end
  else
    kind, wait, reset = 2, fill - cap - queue, level
    free = cap - level
    if free < 0 then free = 0 end
  end
  if free then
    -- Exact floor division of integers below 2^53.
    remaining = math.floor(free / t)
    local r = free - remaining * t
    if r < 0 then
      remaining = remaining - 1
    elseif r >= t then
      remaining = remaining + 1
    end
  end
end
"#;

/// Shared head of the refunds of the window scripts (after [`WINDOW`]; in the refund branch, so
/// that decisions do not build the closure): `wstart(x)`, the start of the window of length `w`
/// that `x` falls in.
const WINDOW_REFUND: &str = r#"
local function wstart(x)
  local q = math.floor(x / w)
  local r = x - q * w
  if r < 0 then
    q = q - 1
  elseif r >= w then
    q = q + 1
  end
  return q * w
end
"#;

/// Fixed window refund (after [`WINDOW`], [`WINDOW_REFUND`]): `FixedWindow::refund`. ARGV[7]:
/// the admission's time. The cost comes off the usage iff it was counted under this period and
/// the admission's window is the latest admission's, and that window has not ended.
const FIXED_WINDOW_REFUND: &str = r#"
if raw then
  local sl, su, sp = string.match(raw, '^(%d+) (%d+) (%d+)$')
  if sl and sp * 1 == w then
    sl = sl * 1
    local from = wstart(sl)
    if wstart(ARGV[7] * 1) == from and from + w > now then
      local used = su * 1 - cost
      if used < 0 then used = 0 end
      state, ttl = string.format('%d %d %d', sl, used, w), from + w - now
    end
  end
end
"#;

/// Sliding window counter refund (after [`WINDOW`], [`WINDOW_REFUND`]):
/// `SlidingWindowCounter::refund`. ARGV[7]: the admission's time. The cost comes off the latest
/// admission's window or the one before, while the latest window's successor has not ended.
const SLIDING_COUNTER_REFUND: &str = r#"
if raw then
  local a, b, c, d = string.match(raw, '^(%d+) (%d+) (%d+) (%d+)$')
  if a and d * 1 == w then
    a = a * 1
    local latest, charged = wstart(a), wstart(ARGV[7] * 1)
    local prev, cur, counted = b * 1, c * 1, true
    if charged == latest then
      cur = cur - cost
      if cur < 0 then cur = 0 end
    elseif charged + w == latest then
      prev = prev - cost
      if prev < 0 then prev = 0 end
    else
      counted = false
    end
    if counted and latest + 2 * w > now then
      state, ttl = string.format('%d %d %d %d', a, prev, cur, w), latest + 2 * w - now
    end
  end
end
"#;

/// Quota with rollover refund (after [`WINDOW`], [`WINDOW_REFUND`]): `QuotaRollover::refund`.
/// ARGV[8]: the admission's time. The cost comes off the usage iff it was counted under this
/// period in the admission's window, and that window has not ended.
const QUOTA_ROLLOVER_REFUND: &str = r#"
if raw then
  local ss, su, sc, sp = string.match(raw, '^(%d+) (%d+) (%d+) (%d+)$')
  if ss and sp * 1 == w then
    ss = ss * 1
    if wstart(ARGV[8] * 1) == ss and ss + w > now then
      local used = su * 1 - cost
      if used < 0 then used = 0 end
      state, ttl = string.format('%d %d %d %d', ss, used, sc * 1, w), ss + 2 * w - now
    end
  end
end
"#;

/// Sliding window log refund: `SlidingWindowLog::refund`. ARGV[7]: the admission's time. The
/// cost comes off the first entry at exactly that time that still counts (within the shorter
/// of the current period and the log's own), dropped when nothing is left of it;
/// every other entry is kept as it is, and the log keeps the period it was written under.
const SLIDING_LOG_REFUND: &str = r#"
if raw then
  local pw, from = string.match(raw, '^(%d+)/()')
  if pw then
    pw = pw * 1
    local charged = ARGV[7] * 1
    local hz = ARGV[6] * 1
    if pw < hz then hz = pw end
    local parts, k, found, newest = {}, 0, false, now
    for t, c in string.gmatch(string.sub(raw, from), '(%d+):(%d+)') do
      t, c = t * 1, c * 1
      local keep = true
      if not found and t == charged and t + hz > now then
        found = true
        c = c - cost
        keep = c > 0
      end
      if keep then
        k = k + 1
        parts[k] = string.format('%d:%d', t, c)
        newest = t
      end
    end
    if found then
      state, ttl = string.format('%d/', pw) .. table.concat(parts, ' '), newest + pw - now
      if ttl < 1 then ttl = 1 end
    end
  end
end
"#;

/// Meter refund: the meters' `refund`. The theoretical arrival time moves back by `cost · T`,
/// never before now and never by more than the admission can still hold (it was charged at
/// the last ARGV; its cells end at most capacity plus queue after that); a meter already
/// drained is left alone.
const METER_REFUND: &str = r#"
if raw and string.find(raw, '^%d+$') then
  local tat = raw * 1
  local held = ARGV[#ARGV] + ARGV[6] + ARGV[7] - now
  local give = cost * (ARGV[5] * 1)
  if held < give then give = held end
  if tat > now and give > 0 then
    tat = tat - give
    if tat < now then tat = now end
    ttl = tat - now
    if ttl < 1 then ttl = 1 end
    state = string.format('%d', tat)
  end
end
"#;

/// Cost-aware token bucket refund: `CostAwareTokenBucket::refund`. The theoretical arrival time
/// moves back by what the cost took under the slowdown of the stored average (never before
/// now, never by more than four capacities after the admission's time, the last ARGV), and the
/// average goes back to the one before the latest admission.
const COST_AWARE_REFUND: &str = r#"
if raw then
  local st, sa, sp = string.match(raw, '^(%d+) (%d+) (%d+)$')
  if st then
    st = st * 1
    if st > now then
      local function fdiv(a, b)
        local q = math.floor(a / b)
        local r = a - q * b
        if r < 0 then
          q = q - 1
        elseif r >= b then
          q = q + 1
        end
        return q
      end
      local t = ARGV[5] * 1
      local ref, top = string.match(ARGV[8], '^(%d+) (%d+) %d+$')
      ref, top = ref * 1, top * 1
      local f = fdiv(sa * 1000, ref)
      if f < 1000 then f = 1000 end
      if f > top then f = top end
      local q = fdiv(t, 1000)
      local step = q * f + fdiv((t - q * 1000) * f + 999, 1000)
      local give = cost * step
      local held = ARGV[#ARGV] + ARGV[6] * 4 - now
      if held < give then give = held end
      if give > 0 then
        local tat = st - give
        if tat < now then tat = now end
        ttl = tat - now
        if ttl < 1 then ttl = 1 end
        state = string.format('%d %d %d', tat, sp * 1, sp * 1)
      end
    end
  end
end
"#;

/// Concurrency (leases). Extra ARGV: slots N (at most `traffik::strategy::MAX_SLOTS`), lease
/// time T in µs, `op` (empty: a decision; `r`: release, `n`: renew the lease stamped `ARGV[8]`).
/// State: `"T/at:until:slots ..."`, the lease time the expiries were set under and the leases in
/// the order they were taken. Under a shorter T every expiry moves earlier by the difference;
/// expiries are capped at `now + T`; expired, empty and far-future leases are dropped, and at
/// most 1024 leases are read (the Rust strategy's rules, line by line). A decision's reply adds
/// the new lease's stamp (0 when none was taken); a release or renewal replies `{changed}`.
const CONCURRENCY: &str = r#"
local n = ARGV[5] * 1
local t = ARGV[6] * 1
local op = ARGV[7]
local horizon = now + t
local ats, untils, slots, k = {}, {}, {}, 0
if raw then
  local pw, from = string.match(raw, '^(%d+)/()')
  if pw then
    local shorter = pw * 1 - t
    if shorter < 0 then shorter = 0 end
    for a, u, c in string.gmatch(string.sub(raw, from), '(%d+):(%d+):(%d+)') do
      a, u, c = a * 1, u * 1 - shorter, c * 1
      if u > horizon then u = horizon end
      if u > now and a <= horizon and c > 0 and k < 1024 then
        if c > 1024 then c = 1024 end
        k = k + 1
        ats[k], untils[k], slots[k] = a, u, c
      end
    end
  end
end
local function save()
  local parts, latest = {}, now
  for i = 1, k do
    parts[i] = string.format('%d:%d:%d', ats[i], untils[i], slots[i])
    if untils[i] > latest then latest = untils[i] end
  end
  state = string.format('%d/', t) .. table.concat(parts, ' ')
  ttl = latest - now
  if ttl < 1 then ttl = 1 end
end
if op == '' then
  if cost <= n then
    local used, maxat, latest = 0, nil, now
    for i = 1, k do
      used = used + slots[i]
      if not maxat or ats[i] + 1 > maxat then maxat = ats[i] + 1 end
      if untils[i] > latest then latest = untils[i] end
    end
    if used + cost <= n then
      local st = now
      if maxat then
        if maxat > st then st = maxat end
      elseif st < 1 then
        st = 1
      end
      k = k + 1
      ats[k], untils[k], slots[k] = st, now + t, cost
      if now + t > latest then latest = now + t end
      kind, remaining, reset, lease = 0, n - used - cost, latest - now, st
      if mode == 'c' then save() end
    else
      local order = {}
      for i = 1, k do order[i] = i end
      table.sort(order, function(x, y) return untils[x] < untils[y] end)
      local held, w8 = used, t
      for _, i in ipairs(order) do
        held = held - slots[i]
        if held + cost <= n then
          w8 = untils[i] - now
          break
        end
      end
      remaining = n - used
      if remaining < 0 then remaining = 0 end
      kind, wait, reset = 2, w8, latest - now
    end
  end
else
  local stamp = ARGV[8] * 1
  for i = 1, k do
    if ats[i] == stamp then
      if op == 'r' then
        table.remove(ats, i)
        table.remove(untils, i)
        table.remove(slots, i)
        k = k - 1
      else
        untils[i] = now + t
      end
      changed = 1
      save()
      break
    end
  end
end
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

/// The group script: decides every member of a group in one script. `KEYS` = the members'
/// storage keys; `ARGV = mode, now, min_ttl_ms`, then per member six values: strategy (`fw`,
/// `swc`, `swl`, `qr`, `ca` or `m`), cost, and the four parameters of its script (`limit, period_us` for
/// the windows and the log, `limit, period_us, cap` for the quota with rollover,
/// `interval_us, capacity_us, period_us, "reference slowdown window"` for the cost-aware bucket,
/// `interval_us, capacity_us, queue_us, period_us` for meters). Every
/// member is decided on its current state with the bodies of the single scripts; the new states
/// are written only in consume mode and only if every member admitted. Replies
/// `{kind, remaining, wait_us, reset_us, lease}` per member, flattened (`lease`: a concurrency
/// member's new lease stamp, else 0), then `at`: the server's time when the script read it (0
/// when the client sent `now`), the time every member decided at. A concurrency member (`cc`)
/// takes `limit, period_us, '', 0`. Group members are refunded one by one, by their own
/// scripts (on the keys the group wrote).
const GROUP_HEAD: &str = r#"
local gmode = ARGV[1]
local now, at = ARGV[2], 0
if now == '' then
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
  at = now
else
  now = now * 1
end
local min_ttl = ARGV[3] * 1
local out, states, ttls, all = {}, {}, {}, true
for i = 1, #KEYS do
  local o = 3 + (i - 1) * 6
  local key = KEYS[i]
  local which = ARGV[o + 1]
  local cost = ARGV[o + 2] * 1
  local mode = 'c'
  local raw = redis.call('GET', key)
  local kind, remaining, wait, reset = 3, 0, 0, 0
  local state, ttl
  local lease, changed = 0, 0
"#;

const GROUP_TAIL: &str = r#"
  out[5 * i - 4], out[5 * i - 3], out[5 * i - 2], out[5 * i - 1], out[5 * i] = kind, remaining, wait, reset, lease
  states[i], ttls[i] = state, ttl
  if kind > 1 then all = false end
end
if all and gmode == 'c' then
  for i = 1, #KEYS do
    if states[i] then
      local ttl = ttls[i]
      local ms = math.floor((ttl + 999) / 1000)
      local r = ttl + 999 - ms * 1000
      if r < 0 then
        ms = ms - 1
      elseif r >= 1000 then
        ms = ms + 1
      end
      if ms < min_ttl then ms = min_ttl end
      if ms < 1 then ms = 1 end
      if ms > 1000000000000000 then ms = 1000000000000000 end
      redis.call('SET', KEYS[i], states[i], 'PX', string.format('%d', ms))
    end
  end
end
out[5 * #KEYS + 1] = at
return out
"#;

/// A single script's body for the group script: its parameters are the member's.
fn member_body(body: &[&str]) -> String {
    body.concat()
        .replace("ARGV[5]", "ARGV[o + 3]")
        .replace("ARGV[6]", "ARGV[o + 4]")
        .replace("ARGV[7]", "ARGV[o + 5]")
        .replace("ARGV[8]", "ARGV[o + 6]")
}

fn group_script() -> String {
    [
        GROUP_HEAD,
        "  if which == 'fw' then\n",
        &member_body(&[WINDOW, FIXED_WINDOW]),
        "  elseif which == 'swc' then\n",
        &member_body(&[WINDOW, SLIDING_COUNTER]),
        "  elseif which == 'swl' then\n",
        &member_body(&[SLIDING_LOG]),
        "  elseif which == 'ca' then\n",
        &member_body(&[COST_AWARE]),
        "  elseif which == 'qr' then\n",
        &member_body(&[WINDOW, QUOTA_ROLLOVER]),
        "  elseif which == 'cc' then\n",
        &member_body(&[CONCURRENCY]),
        "  else\n",
        &member_body(&[METER]),
        "  end\n",
        GROUP_TAIL,
    ]
    .concat()
}

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
    pub(crate) quota_rollover: Lua,
    pub(crate) cost_aware: Lua,
    pub(crate) concurrency: Lua,
    pub(crate) group: Lua,
    pub(crate) read: Lua,
    pub(crate) cas: Lua,
}

/// The concurrency script: its replies carry the lease (decisions) or whether anything changed
/// (releases and renewals).
fn concurrency_script() -> String {
    [PROLOGUE, CONCURRENCY_HEAD, CONCURRENCY, WRITE, CONCURRENCY_REPLY].concat()
}

/// A strategy's script: `head` (shared by both modes), then the refund (mode `r`) or the
/// decision (every other mode), then the write and the reply.
fn strategy_script(head: &[&str], refund: &[&str], decide: &str) -> String {
    [&[PROLOGUE][..], head, &["if mode == 'r' then\n"], refund, &["else\n", decide, "end\n", WRITE, REPLY]]
        .concat()
        .concat()
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    fixed_window: Lua::new(strategy_script(&[WINDOW], &[WINDOW_REFUND, FIXED_WINDOW_REFUND], FIXED_WINDOW)),
    sliding_counter: Lua::new(strategy_script(&[WINDOW], &[WINDOW_REFUND, SLIDING_COUNTER_REFUND], SLIDING_COUNTER)),
    sliding_log: Lua::new(strategy_script(&[], &[SLIDING_LOG_REFUND], SLIDING_LOG)),
    meter: Lua::new(strategy_script(&[], &[METER_REFUND], METER)),
    quota_rollover: Lua::new(strategy_script(&[WINDOW], &[WINDOW_REFUND, QUOTA_ROLLOVER_REFUND], QUOTA_ROLLOVER)),
    cost_aware: Lua::new(strategy_script(&[], &[COST_AWARE_REFUND], COST_AWARE)),
    concurrency: Lua::new(concurrency_script()),
    group: Lua::new(group_script()),
    read: Lua::new(READ.to_owned()),
    cas: Lua::new(CAS.to_owned()),
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_script_reads_each_members_own_parameters() {
        let members = member_body(&[
            WINDOW,
            FIXED_WINDOW,
            SLIDING_COUNTER,
            SLIDING_LOG,
            METER,
            QUOTA_ROLLOVER,
            COST_AWARE,
            CONCURRENCY,
        ]);
        for single in ["ARGV[4]", "ARGV[5]", "ARGV[6]", "ARGV[7]", "ARGV[8]"] {
            assert!(!members.contains(single), "{single} left in a member body");
        }
        assert!(members.contains("ARGV[o + 3]") && members.contains("ARGV[o + 6]"));
    }

    #[test]
    fn the_concurrency_script_replies_with_its_lease() {
        let script = concurrency_script();
        assert!(script.contains("return {kind, remaining, wait, reset, lease, at}"));
        assert!(script.contains("return {changed}"));
    }

    #[test]
    fn decisions_skip_the_refund_branch_with_one_comparison() {
        let script = strategy_script(&[WINDOW], &[WINDOW_REFUND, FIXED_WINDOW_REFUND], FIXED_WINDOW);
        let branch = script.find("if mode == 'r' then").unwrap_or(usize::MAX);
        let closure = script.find("local function wstart").unwrap_or(0);
        let decision = script.find(FIXED_WINDOW).unwrap_or(0);
        // The refund's closure is built inside its branch, before the decision's `else`.
        assert!(branch < closure && closure < decision, "{script}");
        assert!(script.contains("return {kind, remaining, wait, reset, 0, at}"));
        // The group script decides only: no refund branch in it.
        assert!(!group_script().contains("mode == 'r'"));
    }
}
