//! A thin, pleasant wrapper over the generated stubs: connect, create, get, wait for a
//! terminal state, watch, cancel, retry. Errors stay `tonic::Status` (the gRPC code is the
//! contract); [`field_violations`] reads the details of an `INVALID_ARGUMENT`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = dispatch_client::Client::connect("http://127.0.0.1:50051").await?;
//! let job = client.create("default", "noop", serde_json::json!({"objectId": "x"})).await?;
//! let done = client.wait(&job.id, std::time::Duration::from_secs(30)).await?;
//! assert_eq!(done.state(), dispatch_client::pb::JobState::Succeeded);
//! # Ok(()) }
//! ```

use std::time::Duration;

use futures::{Stream, StreamExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::json;
use crate::pb::{self, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient};

/// A connection to dispatch. Cheap to clone; clones share the HTTP/2 connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    jobs: JobServiceClient<Transport>,
    workers: WorkerServiceClient<Transport>,
}

/// The channel every call of a [`Client`] goes through: the connection, plus the API key
/// when one is set ([`Client::with_token`]).
pub type Transport = tonic::service::interceptor::InterceptedService<Channel, Token>;

/// Sends `authorization: Bearer <token>` with every call when set. Its `Debug` never shows
/// the token.
#[derive(Clone, Default)]
pub struct Token(Option<tonic::metadata::AsciiMetadataValue>);

impl Token {
    /// The header value for `token`; INVALID_ARGUMENT when it cannot travel in a header.
    pub fn bearer(token: &str) -> Result<Token, Status> {
        let mut v: tonic::metadata::AsciiMetadataValue = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| Status::invalid_argument("the API token holds characters a header cannot carry"))?;
        v.set_sensitive(true);
        Ok(Token(Some(v)))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Token(<redacted>)"
        } else {
            "Token(None)"
        })
    }
}

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The options of a job, for [`Client::create_with`]. Unset fields take dispatch's defaults.
pub type JobOptions = pb::JobOptions;

/// TLS settings of a connection to dispatch started with `--tls-cert` (docs/security.md).
#[derive(Clone, Default)]
pub struct Tls {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client key is a secret: only say whether there is one.
        f.debug_struct("Tls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_certificate", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl Tls {
    /// Trusts the system's root certificates only.
    pub fn new() -> Tls {
        Tls::default()
    }

    /// Trusts the CA certificate(s) in `pem` (instead of the system's roots), e.g. the CA of
    /// a private certificate.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Tls {
        self.ca_pem = Some(pem.into());
        self
    }

    /// [`Tls::ca_pem`] from a file.
    pub fn ca_file(self, path: impl AsRef<std::path::Path>) -> std::io::Result<Tls> {
        Ok(self.ca_pem(read_pem(path.as_ref())?))
    }

    /// Presents this client certificate and key (PEM) to a dispatch that asks for one
    /// (mutual TLS, `--tls-client-ca`).
    pub fn identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Tls {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// [`Tls::identity_pem`] from files.
    pub fn identity_files(
        self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> std::io::Result<Tls> {
        Ok(self.identity_pem(read_pem(cert.as_ref())?, read_pem(key.as_ref())?))
    }

    /// Checks the server's certificate against this name instead of the URL's host.
    pub fn domain(mut self, name: impl Into<String>) -> Tls {
        self.domain = Some(name.into());
        self
    }

    fn config(&self) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new();
        c = match &self.ca_pem {
            Some(pem) => c.ca_certificate(Certificate::from_pem(pem)),
            None => c.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

fn read_pem(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| std::io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))
}

impl Client {
    /// Connects now over TLS (an `https://` URL); fails when dispatch cannot be reached or
    /// its certificate is not trusted.
    pub async fn connect_tls(url: impl Into<String>, tls: &Tls) -> Result<Client, tonic::transport::Error> {
        let channel = endpoint(url.into())?.tls_config(tls.config())?.connect().await?;
        Ok(Client::from_channel(channel))
    }

    /// Like [`Client::connect_lazy`], over TLS.
    pub fn connect_lazy_tls(url: impl Into<String>, tls: &Tls) -> Result<Client, tonic::transport::Error> {
        Ok(Client::from_channel(
            endpoint(url.into())?.tls_config(tls.config())?.connect_lazy(),
        ))
    }

    /// Connects now; fails when dispatch cannot be reached.
    pub async fn connect(url: impl Into<String>) -> Result<Client, tonic::transport::Error> {
        let channel = endpoint(url.into())?.connect().await?;
        Ok(Client::from_channel(channel))
    }

    /// Connects on first use and reconnects as needed; never fails for an unreachable server.
    pub fn connect_lazy(url: impl Into<String>) -> Result<Client, tonic::transport::Error> {
        Ok(Client::from_channel(endpoint(url.into())?.connect_lazy()))
    }

    /// Wraps an existing channel (TLS, interceptors and timeouts are the caller's).
    pub fn from_channel(channel: Channel) -> Client {
        Self::with_transport(channel, Token::default())
    }

    fn with_transport(channel: Channel, token: Token) -> Client {
        Client {
            jobs: JobServiceClient::with_interceptor(channel.clone(), token.clone()),
            workers: WorkerServiceClient::with_interceptor(channel.clone(), token),
            channel,
        }
    }

    /// The same connection, sending the API key `token` with every call (dispatch with
    /// authentication on; docs/security.md).
    pub fn with_token(&self, token: &str) -> Result<Client, Status> {
        Ok(Self::with_transport(self.channel.clone(), Token::bearer(token)?))
    }

    /// The generated `JobService` client, for everything the wrapper does not cover.
    pub fn jobs(&self) -> JobServiceClient<Transport> {
        self.jobs.clone()
    }

    /// The generated `WorkerService` client (claim, heartbeat, complete, fail).
    pub fn workers(&self) -> WorkerServiceClient<Transport> {
        self.workers.clone()
    }

    /// Creates a job of `job_type` on `queue` with a JSON payload and default options.
    pub async fn create(&self, queue: &str, job_type: &str, payload: serde_json::Value) -> Result<pb::Job, Status> {
        let resp = self
            .create_with(queue, job_type, payload, JobOptions::default())
            .await?;
        resp.job.ok_or_else(|| Status::internal("CreateJob returned no job"))
    }

    /// Creates a job with options; `created` is false when an idempotency key matched.
    pub async fn create_with(
        &self,
        queue: &str,
        job_type: &str,
        payload: serde_json::Value,
        options: JobOptions,
    ) -> Result<pb::CreateJobResponse, Status> {
        let req = pb::CreateJobRequest {
            queue: queue.to_string(),
            r#type: job_type.to_string(),
            payload: Some(json::to_proto(&payload)),
            options: Some(options),
        };
        Ok(self.jobs.clone().create_job(req).await?.into_inner())
    }

    /// Reads a job; `NOT_FOUND` when there is none with this id.
    pub async fn get(&self, id: &str) -> Result<pb::Job, Status> {
        let resp = self
            .jobs
            .clone()
            .get_job(pb::GetJobRequest { id: id.to_string() })
            .await?;
        resp.into_inner()
            .job
            .ok_or_else(|| Status::internal("GetJob returned no job"))
    }

    /// The job's events from its creation on, one per transition; the stream ends after the
    /// terminal one (SUCCEEDED, FAILED or CANCELLED).
    pub async fn watch(&self, id: &str) -> Result<impl Stream<Item = Result<pb::JobEvent, Status>> + use<>, Status> {
        let stream = self
            .jobs
            .clone()
            .watch_job(pb::WatchJobRequest { id: id.to_string() })
            .await?
            .into_inner();
        Ok(stream.filter_map(|r| async move {
            match r {
                Ok(resp) => resp.event.map(Ok),
                Err(s) => Some(Err(s)),
            }
        }))
    }

    /// Waits until the job is in a terminal state and returns it; `DEADLINE_EXCEEDED` after
    /// `timeout`. Follows the watch stream, so it returns as soon as the job ends.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<pb::Job, Status> {
        let follow = async {
            let events = self.watch(id).await?;
            futures::pin_mut!(events);
            // History first (a retried job has older terminal events); the stream ends once
            // the latest event is terminal.
            while let Some(e) = events.next().await {
                e?;
            }
            self.get(id).await
        };
        match tokio::time::timeout(timeout, follow).await {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "job {id} did not end within {timeout:?}"
            ))),
        }
    }

    /// Cancels a job: at once when it is waiting, through its worker's next heartbeat when it
    /// runs. `FAILED_PRECONDITION` when it has already ended.
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<pb::Job, Status> {
        let resp = self
            .jobs
            .clone()
            .cancel_job(pb::CancelJobRequest {
                id: id.to_string(),
                reason: reason.to_string(),
            })
            .await?;
        resp.into_inner()
            .job
            .ok_or_else(|| Status::internal("CancelJob returned no job"))
    }

    /// Runs a FAILED or CANCELLED job again with a fresh budget of attempts.
    pub async fn retry(&self, id: &str) -> Result<pb::Job, Status> {
        let resp = self
            .jobs
            .clone()
            .retry_job(pb::RetryJobRequest { id: id.to_string() })
            .await?;
        resp.into_inner()
            .job
            .ok_or_else(|| Status::internal("RetryJob returned no job"))
    }
}

fn endpoint(url: String) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true))
}

/// True for SUCCEEDED, FAILED and CANCELLED.
pub fn is_terminal(state: pb::JobState) -> bool {
    matches!(
        state,
        pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled
    )
}

/// The `(field, description)` pairs of an `INVALID_ARGUMENT` status (empty for other codes).
pub fn field_violations(status: &Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    if status.code() != Code::InvalidArgument {
        return Vec::new();
    }
    status
        .get_error_details()
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}
