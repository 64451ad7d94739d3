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
    /// A number that is NaN or infinite.
    #[error("`{name}` must be a finite number")]
    NotFinite {
        /// The parameter.
        name: &'static str,
    },
    /// A negative number.
    #[error("`{name}` must not be negative")]
    Negative {
        /// The parameter.
        name: &'static str,
    },
    /// Zero, where only a positive value makes sense (a window of zero hits, a cost of zero).
    #[error("`{name}` must be above zero")]
    Zero {
        /// The parameter.
        name: &'static str,
    },
    /// A value outside the range the parameter allows.
    #[error("`{name}` must be within {range}")]
    OutOfRange {
        /// The parameter.
        name: &'static str,
        /// The allowed range, in words.
        range: &'static str,
    },
}

/// Checks that `value` is a finite, positive number.
pub(crate) fn positive(name: &'static str, value: f64) -> Result<f64, ParamError> {
    if !value.is_finite() {
        Err(ParamError::NotFinite { name })
    } else if value < 0.0 {
        Err(ParamError::Negative { name })
    } else if value == 0.0 {
        Err(ParamError::Zero { name })
    } else {
        Ok(value)
    }
}

impl From<ParamError> for crate::Error {
    fn from(e: ParamError) -> Self {
        crate::Error::Config(crate::ConfigError::Strategy(e))
    }
}
