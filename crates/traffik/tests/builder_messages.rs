//! A builder missing its uid, rate, backend or strategy does not compile, and the compiler says
//! which part is missing and how to set it (the texts are pinned in `compile_fail/*.stderr`).

#[test]
fn a_missing_part_is_named_by_the_compiler() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile_fail/missing_*.rs");
}

/// The observed defect: a bare closure given as the throttled handler compiled and was never
/// called (the integrations look for their own handler type). Now it does not compile.
#[test]
fn a_throttled_handler_must_be_an_integrations_type() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile_fail/handler_*.rs");
}
