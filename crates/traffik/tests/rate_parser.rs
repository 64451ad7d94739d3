//! The rate parser never panics and round-trips everything it accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use traffik::Rate;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn never_panics_on_arbitrary_text(s in ".{0,40}") {
        let _ = Rate::parse(&s);
    }

    #[test]
    fn never_panics_on_rate_like_text(s in "[ 0-9/a-zA-Z.,+-]{0,24}") {
        if let Ok(r) = Rate::parse(&s) {
            prop_assert_eq!(Rate::parse(&r.to_string()), Ok(r));
        }
    }

    #[test]
    fn accepts_generated_valid_forms(
        limit in 1u32..1_000_000,
        count in 1u64..500,
        unit in prop::sample::select(vec![
            ("ms", 1u64), ("milliseconds", 1), ("s", 1_000), ("sec", 1_000), ("seconds", 1_000),
            ("m", 60_000), ("mins", 60_000), ("minute", 60_000), ("h", 3_600_000), ("hrs", 3_600_000),
            ("d", 86_400_000), ("days", 86_400_000),
        ]),
        form in 0usize..4,
        upper in any::<bool>(),
    ) {
        let u = if upper { unit.0.to_uppercase() } else { unit.0.to_owned() };
        let text = match form {
            0 => format!("{limit}/{count}{u}"),
            1 => format!("{limit}/{count} {u}"),
            2 => format!("  {limit} per {count} {u} "),
            _ => format!("{limit} per{u}"),
        };
        let r = Rate::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        let count = if form == 3 { 1 } else { count };
        prop_assert_eq!(r.limit(), u64::from(limit));
        prop_assert_eq!(r.period_ms(), count * unit.1);
        prop_assert_eq!(Rate::parse(&r.to_string()), Ok(r));
    }
}
