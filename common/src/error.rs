//! The one error type of `lorasweep-common`.

/// What parsing or converting a domain value can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value is outside what the field allows; the message names the field and the allowed values.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field (or sweep-file key) that was wrong.
        field: String,
        /// What was wrong and what is allowed.
        message: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), message: message.into() }
    }
}
