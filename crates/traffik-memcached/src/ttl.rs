//! Converting a strategy's time to live (microseconds) to memcached's expiry.

/// Above this many seconds memcached reads an expiry as an absolute unix time.
pub const MAX_RELATIVE_SECS: u64 = 2_592_000;

/// Seconds added to every time to live. Memcached's clock ticks once per second and may lag
/// the wall clock by up to one tick, so an item stored with `n` seconds can expire after a
/// little more than `n - 1` (more with timer drift). Keeping state longer never changes a
/// decision (strategies treat state older than its time to live as absent); dropping it early
/// would hand out fresh quota.
pub const CLOCK_SLACK_SECS: u64 = 2;

/// The memcached expiry for a strategy's `ttl_us`, at least `min_secs`, given the wall clock
/// `unix_now_secs`: whole seconds rounded **up** plus [`CLOCK_SLACK_SECS`]; sent as a
/// relative value up to 30 days ([`MAX_RELATIVE_SECS`]) and as the absolute unix time
/// `unix_now_secs + secs` beyond. An expiry past what the protocol's 32-bit timestamp holds
/// (year 2106) is `0`, "never expires" (the item can still be evicted).
pub fn memcached_exptime(ttl_us: u64, min_secs: u64, unix_now_secs: u64) -> u32 {
    let secs = ttl_us.div_ceil(1_000_000).saturating_add(CLOCK_SLACK_SECS).max(min_secs).max(1);
    if secs <= MAX_RELATIVE_SECS {
        // At most 2_592_000: fits.
        return u32::try_from(secs).unwrap_or(0);
    }
    u32::try_from(unix_now_secs.saturating_add(secs)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn rounds_up_and_adds_slack() {
        assert_eq!(memcached_exptime(0, 0, NOW), 2);
        assert_eq!(memcached_exptime(1, 0, NOW), 3);
        assert_eq!(memcached_exptime(1_000_000, 0, NOW), 3);
        assert_eq!(memcached_exptime(1_000_001, 0, NOW), 4);
        assert_eq!(memcached_exptime(59_999_999, 0, NOW), 62);
        assert_eq!(memcached_exptime(1, 10, NOW), 10);
    }

    #[test]
    fn thirty_days_is_the_last_relative_value() {
        let edge_us = (MAX_RELATIVE_SECS - CLOCK_SLACK_SECS) * 1_000_000;
        assert_eq!(memcached_exptime(edge_us, 0, NOW), 2_592_000);
        // One microsecond more rounds up to one second more: absolute from now on.
        assert_eq!(u64::from(memcached_exptime(edge_us + 1, 0, NOW)), NOW + MAX_RELATIVE_SECS + 1);
        let year_us = 365 * 86_400 * 1_000_000;
        assert_eq!(u64::from(memcached_exptime(year_us, 0, NOW)), NOW + 365 * 86_400 + CLOCK_SLACK_SECS);
    }

    #[test]
    fn beyond_2106_never_expires() {
        assert_eq!(memcached_exptime(u64::MAX, 0, NOW), 0);
        assert_eq!(memcached_exptime(200 * 365 * 86_400 * 1_000_000, 0, NOW), 0);
    }
}
