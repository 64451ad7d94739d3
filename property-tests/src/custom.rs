//! A user-style strategy (no native backend path, no inline packing), to prove that custom
//! strategies run on every backend through the generic compare-and-swap path.

use traffik::strategy::{FixedWindow, FixedWindowState, Input, Metadata, Step, Strategy, Write};

/// Fixed-window semantics implemented as a third-party strategy would be: it reuses the public
/// state machine but reports no built-in identity, so backends must use the generic path.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainFixedWindow;

impl Strategy for PlainFixedWindow {
    type State = FixedWindowState;

    fn name(&self) -> &str {
        "plain-fw"
    }

    fn decide(&self, state: Option<&FixedWindowState>, input: &Input) -> Step<FixedWindowState> {
        FixedWindow.decide(state, input)
    }

    fn metadata(&self, state: Option<&FixedWindowState>, input: &Input) -> Metadata {
        FixedWindow.metadata(state, input)
    }

    fn refund(&self, state: &FixedWindowState, charged_at_us: u64, input: &Input) -> Option<Write<FixedWindowState>> {
        FixedWindow.refund(state, charged_at_us, input)
    }
}
