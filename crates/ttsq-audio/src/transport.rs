//! The S3 client's HTTP transport: hyper over TCP sockets that acknowledge
//! what they receive at once.
//!
//! # Why not the SDK's default connector
//!
//! An S3 server that leaves Nagle's algorithm on (s3s-fs, which ttsq runs
//! locally, does not set `TCP_NODELAY`) sends the first write of a response
//! (the headers and the first few KiB of the body) at once, then holds the
//! rest of the body until that first segment is acknowledged. On a reused
//! keep-alive connection Linux delays that ACK by up to 40 ms, so every
//! `GetObject` of a 20–50 KB audio object took ~44 ms instead of ~0.5 ms:
//! the whole overhead of a high-priority cache hit. The SDK's connector offers
//! no hook into its sockets, so this one sets `TCP_QUICKACK` after every read
//! (Linux clears it again on its own, hence every time) as well as
//! `TCP_NODELAY` for its own writes. Elsewhere the socket options are no-ops
//! and the transport behaves like the SDK's.
//!
//! Errors are classified for the SDK's retry policy the way its own hyper
//! adapter does: connection and I/O failures are transient, a timeout is a
//! timeout, a malformed request is the caller's.
//!
//! # Timeouts
//!
//! Each client that sends through the transport asks for its own connect
//! and read timeouts: S3 its configured ones, the credential providers
//! short ones (instance metadata: 1 s each, so that a chain that finds
//! nothing elsewhere gives up quickly off AWS). The transport keeps one
//! connection pool per pair asked for, as the SDK's default client does;
//! in practice that is one for S3 and one for each credential provider.

use std::{
    collections::HashMap,
    error::Error as StdError,
    fmt, io,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use aws_smithy_runtime_api::client::{
    http::{
        HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
    },
    orchestrator::{HttpRequest, HttpResponse},
    result::ConnectorError,
    runtime_components::RuntimeComponents,
};
use aws_smithy_types::{body::SdkBody, retry::ErrorKind};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{Connected, Connection, HttpConnector as TcpConnector},
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::net::TcpStream;

use crate::error::{AudioStoreError, find_source};

type BoxError = Box<dyn StdError + Send + Sync>;

/// Idle keep-alive connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The HTTP client the S3 SDK and the AWS credential providers send every
/// request through; cheap to clone (the connection pools are shared).
#[derive(Clone)]
pub(crate) struct Transport {
    /// The process's TLS settings.
    tls: &'static rustls::ClientConfig,
    /// One connector per pair of timeouts asked for, so that every
    /// operation of one client shares a pool.
    connectors: Arc<Mutex<HashMap<Timeouts, SharedHttpConnector>>>,
}

/// The timeouts a client asks the transport for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Timeouts {
    /// Longest wait for a TCP connection; none when `None`.
    connect: Option<Duration>,
    /// Longest wait from sending a request to its response's headers;
    /// none when `None`.
    read: Option<Duration>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Transport(hyper, TCP_NODELAY + TCP_QUICKACK)")
    }
}

impl Transport {
    /// A transport for `http://` and `https://` endpoints (TLS with the
    /// platform's root certificates, as the SDK's default). Fails only when
    /// TLS cannot be set up at all.
    pub(crate) fn new() -> Result<Self, AudioStoreError> {
        Ok(Self {
            tls: tls_config()?,
            connectors: Arc::default(),
        })
    }

    /// The connector for `timeouts`, made on first use.
    fn connector(&self, timeouts: Timeouts) -> SharedHttpConnector {
        // A poisoned lock only means another thread panicked while
        // inserting; the map is still whole.
        let mut connectors = self
            .connectors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        connectors
            .entry(timeouts)
            .or_insert_with(|| SharedHttpConnector::new(Adapter::new(self.tls, timeouts)))
            .clone()
    }
}

impl HttpClient for Transport {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        // The attempt and operation timeouts are enforced by the SDK above.
        self.connector(Timeouts {
            connect: settings.connect_timeout(),
            read: settings.read_timeout(),
        })
    }
}

/// The TLS settings, built once per process: loading the platform's root
/// certificates reads a few hundred files.
fn tls_config() -> Result<&'static rustls::ClientConfig, AudioStoreError> {
    static CONFIG: OnceLock<Result<rustls::ClientConfig, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!(%error, "skipped a platform root certificate");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!(
                    ignored,
                    "no platform root certificates: https S3 endpoints will be refused"
                );
            }
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
            .map_err(|err| format!("TLS setup for S3: {err}"))
        })
        .as_ref()
        .map_err(|err| AudioStoreError::InvalidSettings(err.clone()))
}

/// Sends SDK requests through a hyper client.
struct Adapter {
    /// The pooled client.
    client: Client<HttpsConnector<QuickAckConnector>, SdkBody>,
    /// Longest wait for the response's headers once the request is sent.
    read_timeout: Option<Duration>,
}

impl Adapter {
    /// A client of its own (and so a pool) for `timeouts`.
    fn new(tls: &rustls::ClientConfig, timeouts: Timeouts) -> Self {
        let mut tcp = TcpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(timeouts.connect);
        // The TLS layer above hands `https` URIs down as well.
        tcp.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(QuickAckConnector(tcp));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Self {
            client,
            read_timeout: timeouts.read,
        }
    }
}

impl fmt::Debug for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Adapter")
    }
}

impl HttpConnector for Adapter {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let request = match request.try_into_http1x() {
            Ok(request) => request,
            Err(err) => return HttpConnectorFuture::ready(Err(ConnectorError::user(err.into()))),
        };
        let response = self.client.request(request);
        let read_timeout = self.read_timeout;
        HttpConnectorFuture::new(async move {
            let response = match read_timeout {
                None => response.await,
                Some(limit) => tokio::time::timeout(limit, response).await.map_err(|_| {
                    ConnectorError::timeout(
                        format!("no response within the read timeout of {limit:?}").into(),
                    )
                })?,
            };
            let response = response.map_err(classify)?.map(SdkBody::from_body_1_x);
            HttpResponse::try_from(response).map_err(|err| ConnectorError::other(err.into(), None))
        })
    }
}

/// How the SDK's retry policy should treat a failed request.
fn classify(err: hyper_util::client::legacy::Error) -> ConnectorError {
    let hyper_error = find_source::<hyper::Error>(&err);
    if hyper_error.is_some_and(hyper::Error::is_timeout) {
        return ConnectorError::timeout(err.into());
    }
    if hyper_error.is_some_and(hyper::Error::is_user) {
        return ConnectorError::user(err.into());
    }
    if err.is_connect()
        || hyper_error.is_some_and(|e| e.is_closed() || e.is_canceled())
        || find_source::<io::Error>(&err).is_some()
    {
        return ConnectorError::io(err.into());
    }
    // A connection closed in the middle of a response: worth another try.
    if hyper_error.is_some_and(hyper::Error::is_incomplete_message) {
        return ConnectorError::other(err.into(), Some(ErrorKind::TransientError));
    }
    ConnectorError::other(err.into(), None)
}

/// Opens TCP connections through hyper's connector and wraps them in
/// [`QuickAckStream`].
#[derive(Clone)]
struct QuickAckConnector(TcpConnector);

impl tower_service::Service<http::Uri> for QuickAckConnector {
    type Response = QuickAckStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAckStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(QuickAckStream { io })
        })
    }
}

/// A TCP connection that acknowledges received data at once instead of
/// delaying the ACK (see the module documentation).
struct QuickAckStream {
    io: TokioIo<TcpStream>,
}

impl QuickAckStream {
    /// Asks the kernel to acknowledge what was just read, and what comes
    /// next, without waiting. Linux falls back to delayed ACKs by itself
    /// once the connection looks interactive, so this is set after every
    /// read. A failure only costs latency, so it is ignored.
    fn ack_promptly(&self) {
        #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
        {
            let _ = socket2::SockRef::from(self.io.inner()).set_tcp_quickack(true);
        }
    }
}

impl Read for QuickAckStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.ack_promptly();
        }
        polled
    }
}

impl Write for QuickAckStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl Connection for QuickAckStream {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}
