//! Listeners: accepting connections under a cap, TLS (mutual when a client CA is given) with
//! a handshake deadline, and the HTTP server with its header, body and idle timeouts.
//!
//! Both listeners accept the same way ([`incoming`]): a connection takes a slot of the cap
//! before it is accepted (at the cap, new ones wait in the kernel's backlog), and its TLS
//! handshake runs in a task of its own, so a peer that never finishes one holds nothing but
//! its slot until the deadline.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::config;

/// The TLS acceptor of `cfg`, or `None` when TLS is off. Both listeners speak HTTP/2 and
/// HTTP/1.1 (ALPN `h2`, `http/1.1`).
pub fn tls_acceptor(cfg: &config::Tls) -> anyhow::Result<Option<TlsAcceptor>> {
    if cfg.cert_file.is_empty() {
        return Ok(None);
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .and_then(|certs| certs.collect())
        .with_context(|| format!("reading the TLS certificate file {}", cfg.cert_file))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", cfg.cert_file);
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .with_context(|| format!("reading the TLS key file {}", cfg.key_file))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = if cfg.client_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&cfg.client_ca_file)
            .with_context(|| format!("reading the client CA file {}", cfg.client_ca_file))?
        {
            let cert = cert.with_context(|| format!("reading the client CA file {}", cfg.client_ca_file))?;
            roots
                .add(cert)
                .with_context(|| format!("a certificate in {}", cfg.client_ca_file))?;
        }
        anyhow::ensure!(!roots.is_empty(), "no certificate in {}", cfg.client_ca_file);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .context("client certificate verifier")?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut server = builder
        .with_single_cert(certs, key)
        .with_context(|| format!("the key in {} does not match {}", cfg.key_file, cfg.cert_file))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// A TLS client configuration trusting the CA certificates in `ca_file` (the system's roots
/// when empty) and presenting `cert_file`/`key_file` when given. For dispatch's own links
/// (Redis).
pub fn client_tls(ca_file: &str, cert_file: &str, key_file: &str) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    if ca_file.is_empty() {
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A system certificate rustls cannot use is skipped, as the TLS libraries do.
            let _ = roots.add(cert);
        }
    } else {
        for cert in CertificateDer::pem_file_iter(ca_file).with_context(|| format!("reading the CA file {ca_file}"))? {
            roots
                .add(cert.with_context(|| format!("reading the CA file {ca_file}"))?)
                .with_context(|| format!("a certificate in {ca_file}"))?;
        }
        anyhow::ensure!(!roots.is_empty(), "no certificate in {ca_file}");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    if cert_file.is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|c| c.collect())
        .with_context(|| format!("reading the certificate file {cert_file}"))?;
    let key = PrivateKeyDer::from_pem_file(key_file).with_context(|| format!("reading the key file {key_file}"))?;
    builder
        .with_client_auth_cert(certs, key)
        .with_context(|| format!("the key in {key_file} does not match {cert_file}"))
}

/// One accepted connection: plain TCP or TLS, holding its slot of the listener's cap until
/// it is dropped, and recording when it last moved a byte (for the HTTP idle timeout).
pub struct Conn {
    io: Io,
    remote: SocketAddr,
    local: SocketAddr,
    last_io: Arc<AtomicU64>,
    born: Instant,
    _slot: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    /// The peer's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    /// A handle reading how long the connection has been without traffic.
    pub fn activity(&self) -> Activity {
        Activity {
            last_io: self.last_io.clone(),
            born: self.born,
        }
    }

    fn touch(&self) {
        self.last_io
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// When a [`Conn`] last read or wrote.
#[derive(Clone)]
pub struct Activity {
    last_io: Arc<AtomicU64>,
    born: Instant,
}

impl Activity {
    /// Time since the connection last read or wrote a byte.
    pub fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_io.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if buf.filled().len() > before {
            this.touch();
        }
        r
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut TaskContext<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, data),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        };
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: Some(self.local),
            remote_addr: Some(self.remote),
        }
    }
}

/// Accepts connections on `listener` while fewer than `cap` are open, runs each one's TLS
/// handshake (when `tls` is set) within `handshake_timeout`, and hands over the ready ones,
/// until `shutdown`.
pub fn incoming(
    listener: TcpListener,
    cap: usize,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
) -> mpsc::Receiver<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(cap));
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(s) => s,
                    Err(_) => return,
                },
                _ = shutdown.cancelled() => return,
            };
            let (tcp, remote) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: say so, wait a moment, go on.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            // Without TCP_NODELAY a response written in pieces waits on the caller's delayed
            // ACK (40 ms per unary call).
            let _ = tcp.set_nodelay(true);
            let local = tcp.local_addr().unwrap_or(remote);
            let born = Instant::now();
            let conn = move |io| Conn {
                io,
                remote,
                local,
                last_io: Arc::new(AtomicU64::new(0)),
                born,
                _slot: slot,
            };
            match &tls {
                None => {
                    if tx.send(Ok(conn(Io::Plain(tcp)))).await.is_err() {
                        return;
                    }
                }
                Some(acceptor) => {
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        let shaken = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
                        match shaken {
                            Ok(Ok(stream)) => {
                                let _ = tx.send(Ok(conn(Io::Tls(Box::new(stream))))).await;
                            }
                            // A failed handshake is the peer's problem (wrong CA, plain HTTP on
                            // the TLS port, a scanner): logged, not fatal to the listener.
                            Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    });
    rx
}

/// Timeouts of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    pub header: Duration,
    pub idle: Duration,
}

/// Serves `router` over HTTP/1.1 and HTTP/2 on the connections of `conns` until `shutdown`,
/// then lets requests in flight finish (up to 10 s).
pub async fn serve_http(
    mut conns: mpsc::Receiver<io::Result<Conn>>,
    router: axum::Router,
    timeouts: HttpTimeouts,
    shutdown: CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    builder.http2().timer(TokioTimer::new());
    loop {
        let conn = tokio::select! {
            c = conns.recv() => match c {
                Some(Ok(c)) => c,
                Some(Err(_)) => continue,
                None => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let activity = conn.activity();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let service = {
            let in_flight = in_flight.clone();
            let router = router.clone();
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let guard = InFlight::new(in_flight.clone());
                let router = router.clone();
                async move {
                    use tower::ServiceExt;
                    let resp = router.oneshot(req.map(axum::body::Body::new)).await;
                    // The count drops when the response body is done, not when its head is sent.
                    resp.map(|r| r.map(|b| axum::body::Body::new(Guarded { body: b, _guard: guard })))
                }
            })
        };
        let served = builder
            .serve_connection_with_upgrades(TokioIo::new(conn), service)
            .into_owned();
        let served = graceful.watch(served);
        let idle = timeouts.idle;
        tokio::spawn(async move {
            tokio::pin!(served);
            let mut tick = tokio::time::interval(idle / 4);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    r = served.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "HTTP connection ended with an error");
                        }
                        return;
                    }
                    _ = tick.tick() => {
                        if in_flight.load(Ordering::Relaxed) == 0 && activity.quiet_for() >= idle {
                            // Dropping the connection closes it: nothing is in flight.
                            return;
                        }
                    }
                }
            }
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::warn!("HTTP connections still open 10 s after shutdown began; closing them");
        }
    }
}

/// Counts a request in flight from its arrival until its response body is done.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(n: Arc<AtomicUsize>) -> InFlight {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted in flight until it is dropped.
struct Guarded {
    body: axum::body::Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.body)
    }
}

/// A TCP listener on `addr` (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
