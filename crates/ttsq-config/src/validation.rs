//! What a section's validation answers: the first setting of the section
//! that cannot work, by its dotted key. [`crate::Settings`] turns it into a
//! [`crate::ConfigError`] naming the variable and where the value came from.

/// A setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    /// Dotted key: `worker.batch_size`, `providers.eleven.base_url`.
    pub(crate) key: String,
    /// Why it was refused.
    pub(crate) reason: String,
}

impl Invalid {
    /// `key` refused for `reason`.
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The outcome of a section's `check`.
pub(crate) type Checked = Result<(), Invalid>;

/// Refuses a zero count, size or interval.
pub(crate) fn at_least_one(key: &str, value: u64) -> Checked {
    if value == 0 {
        return Err(Invalid::new(key, "must be at least 1"));
    }
    Ok(())
}

/// Whether `url` is an http(s) URL.
pub(crate) fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Refuses anything but an http(s) URL.
pub(crate) fn http_url(key: &str, url: &str) -> Checked {
    if !is_http_url(url) {
        return Err(Invalid::new(key, "must be an http(s) URL"));
    }
    Ok(())
}
