//! Typed errors for strategy parameters that can be out of range.

/// A strategy parameter out of range: returned by the `build` of strategies whose parameters
/// are not valid for every value of their type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParamError {
    /// A percentage above 100.
    #[error("`{name}` is {value}%, at most 100% is allowed")]
    PercentAbove100 {
        /// The parameter.
        name: &'static str,
        /// What was given.
        value: u32,
    },
}

impl From<ParamError> for crate::Error {
    fn from(e: ParamError) -> Self {
        crate::Error::Config(e.to_string())
    }
}
