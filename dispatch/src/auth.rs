//! API keys and roles.
//!
//! A key is a bearer token (`dsp_` and 43 random URL-safe characters) that the caller sends as
//! `authorization: Bearer <token>` (gRPC metadata or HTTP header). The keys file holds one
//! line per key, `NAME ROLE SHA256-HEX`: never the token itself. Deleting a line revokes the
//! key; dispatch re-reads the file when it changes ([`Keys::watch`]).
//!
//! Every RPC has a rule ([`allowed`]): the roles that may call it. An RPC without a rule is
//! refused to everyone, so a new RPC cannot go out open by mistake (the role matrix test,
//! driven by the proto's descriptors, fails first).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// What a key may do (docs/security.md has the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Reads: jobs, lists, watch, queues.
    Viewer,
    /// A viewer that also creates, cancels and retries jobs.
    Producer,
    /// WorkerService, for the jobs it claimed.
    Worker,
    /// Everything.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Producer, Role::Worker, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Producer => "producer",
            Role::Worker => "worker",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: one of viewer, producer, worker, admin"))
    }
}

const READ: &[Role] = &[Role::Viewer, Role::Producer, Role::Admin];
const WRITE: &[Role] = &[Role::Producer, Role::Admin];
const WORK: &[Role] = &[Role::Worker, Role::Admin];
const ADMIN: &[Role] = &[Role::Admin];

/// The roles that may call `rpc` (`dispatch.v1.JobService/CreateJob`, no leading slash);
/// None for an RPC without a rule, which nobody may call.
pub fn allowed(rpc: &str) -> Option<&'static [Role]> {
    let (service, method) = rpc.split_once('/')?;
    Some(match (service, method) {
        ("dispatch.v1.JobService", "GetJob" | "ListJobs" | "WatchJob" | "ListQueues" | "GetStats" | "ListWorkers") => {
            READ
        }
        ("dispatch.v1.JobService", "CreateJob" | "CreateJobs" | "CancelJob" | "RetryJob") => WRITE,
        ("dispatch.v1.JobService", "PauseQueue" | "ResumeQueue") => ADMIN,
        (
            "dispatch.v1.WorkerService",
            "ClaimJob" | "ClaimJobs" | "Heartbeat" | "CompleteJob" | "CompleteJobs" | "FailJob" | "Announce",
        ) => WORK,
        _ => return None,
    })
}

/// Services anyone may call, with or without a key: health checks, and reflection (the
/// schema is public; it lets grpcurl find the methods).
pub fn is_open(service: &str) -> bool {
    matches!(
        service,
        "grpc.health.v1.Health" | "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection"
    )
}

/// Who is calling: a key's name and role, and the tag its leases carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: Arc<str>,
    pub role: Role,
    /// The first 16 hex digits of the key's hash: lease ids granted to this key end with
    /// `-<tag>`, so a report carrying another key's lease is refused.
    pub tag: Arc<str>,
}

impl Identity {
    /// A lease id for a claim by this key.
    pub fn lease_id(&self) -> String {
        format!("{}-{}", uuid::Uuid::new_v4().simple(), self.tag)
    }

    /// True when `lease_id` was granted to this key.
    pub fn holds(&self, lease_id: &str) -> bool {
        lease_id.rsplit_once('-').is_some_and(|(_, tag)| tag == &*self.tag)
    }
}

/// A new lease id for a claim by `who` (a plain UUID when authentication is off).
pub fn lease_id(who: Option<&Identity>) -> String {
    match who {
        Some(id) => id.lease_id(),
        None => uuid::Uuid::new_v4().to_string(),
    }
}

/// The SHA-256 of a token, as stored in the keys file.
pub fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token.
pub fn new_token() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!("dsp_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Why a call is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No token, a malformed header, or a token that is not in the keys file.
    Unauthenticated(&'static str),
    /// A known key whose role may not make this call.
    Forbidden { key: Arc<str>, role: Role },
    /// An RPC without a rule.
    NoRule,
}

impl Refusal {
    pub fn status(&self, rpc: &str) -> tonic::Status {
        match self {
            Refusal::Unauthenticated(why) => tonic::Status::unauthenticated(format!(
                "{why}: send `authorization: Bearer <token>` with an API key (docs/security.md)"
            )),
            Refusal::Forbidden { role, .. } => {
                let roles: Vec<&str> = allowed(rpc).unwrap_or(&[]).iter().map(|r| r.as_str()).collect();
                tonic::Status::permission_denied(format!(
                    "a {} key may not call {rpc}; it needs the role {}",
                    role.as_str(),
                    roles.join(" or ")
                ))
            }
            Refusal::NoRule => tonic::Status::permission_denied(format!("{rpc} has no access rule")),
        }
    }
}

/// One line of the keys file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLine {
    pub name: String,
    pub role: Role,
    pub hash: String,
}

/// Parses a keys file: `NAME ROLE SHA256-HEX` per line; `#` comments and blank lines are
/// skipped. Errors name the line.
pub fn parse(text: &str) -> Result<Vec<KeyLine>, String> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [name, role, hash] = parts[..] else {
            return Err(format!(
                "line {}: expected NAME ROLE SHA256, got {} fields",
                n + 1,
                parts.len()
            ));
        };
        let role = role.parse().map_err(|e| format!("line {}: {e}", n + 1))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("line {}: the hash must be 64 hex digits", n + 1));
        }
        keys.push(KeyLine {
            name: name.to_string(),
            role,
            hash: hash.to_ascii_lowercase(),
        });
    }
    Ok(keys)
}

/// Checks a key name: letters, digits, `.`, `_`, `-`, at most 64.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err(format!(
            "key name {name:?}: use letters, digits, '.', '_' and '-', at most 64"
        ));
    }
    Ok(())
}

/// Adds a key with `name` and `role` to the keys file at `path` (created, mode 0600, when
/// missing); returns the token, which is nowhere else.
pub fn create_key(path: &Path, name: &str, role: Role) -> Result<String, String> {
    check_name(name)?;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let existing = parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if existing.iter().any(|k| k.name == name) {
        return Err(format!("{} already has a key named {name}", path.display()));
    }
    let token = new_token();
    let mut out = text;
    if out.is_empty() {
        out.push_str("# Dispatch API keys: NAME ROLE SHA256(token). Delete a line to revoke that key.\n");
    } else if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("{name} {} {}\n", role.as_str(), hash(&token)));
    write_private(path, &out).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(token)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The keys in force. Cheap to clone; every clone sees reloads.
#[derive(Clone)]
pub struct Keys {
    by_hash: Arc<RwLock<Arc<HashMap<String, Identity>>>>,
    path: Arc<PathBuf>,
}

impl Keys {
    /// Loads the keys file; an unreadable or malformed file is an error.
    pub fn load(path: &Path) -> Result<Self, String> {
        let keys = Self {
            by_hash: Arc::default(),
            path: Arc::new(path.to_path_buf()),
        };
        keys.reload()?;
        Ok(keys)
    }

    /// Reads the file again and swaps the keys in; on error the keys in force stay.
    pub fn reload(&self) -> Result<usize, String> {
        let text = std::fs::read_to_string(&*self.path)
            .map_err(|e| format!("reading keys file {}: {e}", self.path.display()))?;
        let lines = parse(&text).map_err(|e| format!("keys file {}: {e}", self.path.display()))?;
        let map: HashMap<String, Identity> = lines
            .into_iter()
            .map(|k| {
                let id = Identity {
                    name: k.name.into(),
                    role: k.role,
                    tag: k.hash[..16].into(),
                };
                (k.hash, id)
            })
            .collect();
        let n = map.len();
        *self.by_hash.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        Ok(n)
    }

    /// The identity of an `authorization` header value, if it names a key in force.
    pub fn identify(&self, authorization: Option<&str>) -> Result<Identity, Refusal> {
        let header = authorization.ok_or(Refusal::Unauthenticated("no API key"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(Refusal::Unauthenticated(
                "the authorization header is not `Bearer <token>`",
            ))?
            .trim();
        let map = self.by_hash.read().unwrap_or_else(|e| e.into_inner()).clone();
        map.get(&hash(token))
            .cloned()
            .ok_or(Refusal::Unauthenticated("unknown or revoked API key"))
    }

    /// Authenticates and authorises a call of `rpc`.
    pub fn check(&self, rpc: &str, authorization: Option<&str>) -> Result<Identity, Refusal> {
        let roles = allowed(rpc).ok_or(Refusal::NoRule)?;
        let id = self.identify(authorization)?;
        if roles.contains(&id.role) {
            Ok(id)
        } else {
            Err(Refusal::Forbidden {
                key: id.name.clone(),
                role: id.role,
            })
        }
    }

    /// Re-reads the file whenever its modification time or size changes (checked every
    /// `every`), until `stop`.
    pub async fn watch(self, every: Duration, stop: tokio_util::sync::CancellationToken) {
        let stamp = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
        };
        // The first check always reloads, so a change made between the load at start and this
        // task's first look is not missed.
        let (mut last, mut first) = (None, true);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let now = stamp(&self.path);
            if !first && now == last {
                continue;
            }
            let quiet = std::mem::replace(&mut first, false);
            last = now;
            match self.reload() {
                Ok(_) if quiet => {}
                Ok(n) => tracing::info!(keys = n, file = %self.path.display(), "API keys reloaded"),
                Err(e) => tracing::error!(error = %e, "API keys not reloaded; the keys in force stay"),
            }
        }
    }
}

/// Logs a refused call (the audit trail): the key's name, never the token.
pub fn audit_refusal(rpc: &str, refusal: &Refusal, peer: Option<std::net::SocketAddr>) {
    let peer = peer.map(|p| p.to_string()).unwrap_or_default();
    match refusal {
        Refusal::Unauthenticated(why) => {
            tracing::warn!(audit = true, rpc, peer, reason = *why, "call refused: unauthenticated")
        }
        Refusal::Forbidden { key, role } => {
            tracing::warn!(audit = true, rpc, peer, key = %key, role = role.as_str(), "call refused: permission denied")
        }
        Refusal::NoRule => tracing::warn!(audit = true, rpc, peer, "call refused: no access rule"),
    }
}

/// The gRPC side of authentication: a tower layer in front of every service that refuses a
/// call without a key allowed to make it, and hands the caller's [`Identity`] to the service
/// in the request's extensions. Open services ([`is_open`]) pass untouched, and everything
/// does when authentication is off (None).
#[derive(Clone)]
pub struct GrpcAuthLayer(pub Option<Keys>);

impl<S> tower::Layer<S> for GrpcAuthLayer {
    type Service = GrpcAuth<S>;
    fn layer(&self, inner: S) -> GrpcAuth<S> {
        GrpcAuth {
            keys: self.0.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct GrpcAuth<S> {
    keys: Option<Keys>,
    inner: S,
}

impl<S, B> tower::Service<axum::http::Request<B>> for GrpcAuth<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<S::Future, std::future::Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        let rpc = req.uri().path().trim_start_matches('/');
        let service = rpc.split('/').next().unwrap_or("");
        if let Some(keys) = &self.keys
            && !is_open(service)
        {
            let authorization = req
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match keys.check(rpc, authorization) {
                Ok(id) => {
                    req.extensions_mut().insert(id);
                }
                Err(refusal) => {
                    let peer = req
                        .extensions()
                        .get::<tonic::transport::server::TcpConnectInfo>()
                        .and_then(|i| i.remote_addr());
                    audit_refusal(rpc, &refusal, peer);
                    return futures::future::Either::Right(std::future::ready(Ok(refusal.status(rpc).into_http())));
                }
            }
        }
        futures::future::Either::Left(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_round_trip_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let t1 = create_key(&path, "ci-producer", Role::Producer).unwrap();
        let t2 = create_key(&path, "w1", Role::Worker).unwrap();
        assert!(create_key(&path, "w1", Role::Worker).is_err(), "names are unique");
        assert!(create_key(&path, "bad name", Role::Worker).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&t1) && !text.contains(&t2), "tokens are never stored");
        let keys = Keys::load(&path).unwrap();
        let who = keys
            .check("dispatch.v1.JobService/CreateJob", Some(&format!("Bearer {t1}")))
            .unwrap();
        assert_eq!((&*who.name, who.role), ("ci-producer", Role::Producer));
        assert_eq!(
            keys.check("dispatch.v1.WorkerService/CompleteJob", Some(&format!("Bearer {t1}"))),
            Err(Refusal::Forbidden {
                key: "ci-producer".into(),
                role: Role::Producer
            })
        );
        assert!(matches!(
            keys.check("dispatch.v1.JobService/GetJob", None),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(matches!(
            keys.check("dispatch.v1.JobService/GetJob", Some("Bearer dsp_nope")),
            Err(Refusal::Unauthenticated(_))
        ));
        assert_eq!(
            keys.check("dispatch.v1.JobService/Nope", Some(&format!("Bearer {t1}"))),
            Err(Refusal::NoRule)
        );
        // Revoke w1 by deleting its line.
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with("w1 "))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept).unwrap();
        keys.reload().unwrap();
        assert!(keys.identify(Some(&format!("Bearer {t2}"))).is_err());
        assert!(keys.identify(Some(&format!("Bearer {t1}"))).is_ok());
    }

    #[test]
    fn leases_name_their_key() {
        let a = Identity {
            name: "a".into(),
            role: Role::Worker,
            tag: "0123456789abcdef".into(),
        };
        let b = Identity {
            name: "b".into(),
            role: Role::Worker,
            tag: "fedcba9876543210".into(),
        };
        let lease = a.lease_id();
        assert!(a.holds(&lease) && !b.holds(&lease));
        assert!(!a.holds(&uuid::Uuid::new_v4().simple().to_string()));
        assert!(lease.len() <= 64 && lease.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
    }

    #[test]
    fn malformed_lines_name_the_line() {
        assert!(parse("a viewer abc").unwrap_err().contains("line 1"));
        assert!(
            parse("# c\n\na boss 0000000000000000000000000000000000000000000000000000000000000000")
                .unwrap_err()
                .contains("line 3: unknown role")
        );
    }
}
