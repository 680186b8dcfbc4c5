//! [`ClientBuilder`]: where the API is, who calls it, and how patiently.

use std::time::Duration;

use crate::{Client, ClientError, RetryPolicy};

/// The variable naming the API's URL, as the `ttsq` command line reads it.
pub const URL_VAR: &str = "TTSQ_URL";

/// The variable holding the API key, as the `ttsq` command line reads it.
pub const API_KEY_VAR: &str = "TTSQ_API_KEY";

/// The API's URL when none is given: a local `ttsq all`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Longest wait for one request's answer by default: longer than any
/// long-poll slice the client asks for.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest wait for a connection, when the builder makes the HTTP client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Client {
    /// A client of the API at `base_url` (`http://host:port`) using
    /// `api_key`, with the defaults of [`ClientBuilder`].
    pub fn new(base_url: &str, api_key: &str) -> Result<Self, ClientError> {
        Self::builder().base_url(base_url).api_key(api_key).build()
    }

    /// A builder: base URL, key, timeouts, retries, user agent, or the
    /// caller's own `reqwest::Client`.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client configured by the environment, as the `ttsq` command line
    /// is: the API at `TTSQ_URL` (default `http://127.0.0.1:8080`) with the
    /// key in `TTSQ_API_KEY`.
    pub fn from_env() -> Result<Self, ClientError> {
        ClientBuilder::from_env()?.build()
    }
}

/// Builds a [`Client`]; only the base URL and the key are required.
///
/// ```
/// # fn demo() -> Result<(), ttsq_client::ClientError> {
/// use std::time::Duration;
/// use ttsq_client::Client;
///
/// let client = Client::builder()
///     .base_url("http://127.0.0.1:8080")
///     .api_key("ttsq_0123456789abcdef")
///     .timeout(Duration::from_secs(30))
///     .build()?;
/// assert_eq!(client.base_url(), "http://127.0.0.1:8080");
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct ClientBuilder {
    base_url: Option<String>,
    api_key: Option<String>,
    timeout: Option<Duration>,
    retry: RetryPolicy,
    user_agent: Option<String>,
    http: Option<reqwest::Client>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never in logs or error output.
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// A builder from the process's environment: [`URL_VAR`] (default
    /// [`DEFAULT_URL`]) and [`API_KEY_VAR`], which must be set.
    pub fn from_env() -> Result<Self, ClientError> {
        Self::from_vars(std::env::vars())
    }

    /// A builder from these `(name, value)` pairs, read as
    /// [`ClientBuilder::from_env`] reads the environment.
    ///
    /// ```
    /// use ttsq_client::ClientBuilder;
    ///
    /// let vars = [("TTSQ_URL", "https://tts.example.com/"), ("TTSQ_API_KEY", "ttsq_abc")];
    /// let client = ClientBuilder::from_vars(vars.map(|(k, v)| (k.to_owned(), v.to_owned())))
    ///     .and_then(ClientBuilder::build)
    ///     .unwrap();
    /// assert_eq!(client.base_url(), "https://tts.example.com");
    /// ```
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ClientError> {
        let mut url = None;
        let mut key = None;
        for (name, value) in vars {
            match name.as_str() {
                URL_VAR => url = Some(value),
                API_KEY_VAR => key = Some(value),
                _ => {}
            }
        }
        let key = key
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| ClientError::Config(format!("no API key: set {API_KEY_VAR}")))?;
        let url = url
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        Ok(Self::default().base_url(url).api_key(key))
    }

    /// The API's URL, `http(s)://host[:port]` (a trailing `/` is dropped).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// The tenant's API key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Longest wait for one request's answer (default 2 minutes). Long
    /// polls ask the server for at most 20 s at a time, so keep it above.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How idempotent calls are retried.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The `User-Agent` sent (default `ttsq-client/{version}`).
    pub fn user_agent(mut self, agent: impl Into<String>) -> Self {
        self.user_agent = Some(agent.into());
        self
    }

    /// Sends through the caller's own `reqwest::Client` (its proxy, TLS
    /// roots, connection pool). The timeout and
    /// user agent set here still apply to each request.
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The client; a [`ClientError::Config`] naming what is missing or
    /// malformed.
    pub fn build(self) -> Result<Client, ClientError> {
        let base_url = self
            .base_url
            .as_deref()
            .unwrap_or_default()
            .trim()
            .trim_end_matches('/')
            .to_owned();
        if base_url.is_empty() {
            return Err(ClientError::Config("no API URL given".into()));
        }
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(ClientError::Config(format!(
                "the API URL must start with http:// or https://, not `{base_url}`"
            )));
        }
        let api_key = self
            .api_key
            .as_deref()
            .unwrap_or_default()
            .trim()
            .to_owned();
        if api_key.is_empty() {
            return Err(ClientError::Config("the API key is empty".into()));
        }
        let user_agent = match (&self.http, self.user_agent) {
            (_, Some(agent)) => Some(agent),
            // A client of the caller's keeps its own user agent.
            (Some(_), None) => None,
            (None, None) => Some(concat!("ttsq-client/", env!("CARGO_PKG_VERSION")).to_owned()),
        };
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .build()
                .map_err(|e| ClientError::Config(format!("cannot build the HTTP client: {e}")))?,
        };
        Ok(Client {
            http,
            base_url,
            api_key,
            retry: self.retry,
            timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
            user_agent,
        })
    }
}
