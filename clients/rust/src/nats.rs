//! Connecting to NATS with credentials and TLS; dispatch and the worker SDK both connect this
//! way (feature `nats`).
//!
//! Credentials come from the URL (`nats://user:password@host:4222`, `nats://token@host:4222`,
//! as the NATS tools take them) or from [`NatsAuth`]'s fields, which win. Every secret may come
//! from a file (`*_file`) so that it need not sit in a command line or an environment.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Credentials and TLS of a NATS connection. `Debug` never shows a secret.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsAuth {
    /// User name (with `password` or `password_file`).
    pub user: String,
    /// Password of `user`. Prefer `password_file`, or the environment.
    pub password: String,
    /// File whose first line is the password of `user`.
    pub password_file: String,
    /// Authentication token. Prefer `token_file`, or the environment.
    pub token: String,
    /// File whose first line is the token.
    pub token_file: String,
    /// File whose first line is an nkey seed (`SU...`).
    pub nkey_seed_file: String,
    /// A `.creds` file (user JWT and nkey seed, as `nsc` writes them).
    pub creds_file: String,
    /// CA certificates (PEM) to trust for the server's certificate; empty: the system's roots.
    pub tls_ca_file: String,
    /// Client certificate (PEM), for a server that verifies clients; goes with `tls_key_file`.
    pub tls_cert_file: String,
    /// Private key (PEM) of `tls_cert_file`.
    pub tls_key_file: String,
    /// Refuse to talk to the server without TLS (also implied by a `tls://` URL or a CA).
    pub tls_required: bool,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("NatsAuth")
            .field("user", &self.user)
            .field("password", &set(&self.password))
            .field("password_file", &self.password_file)
            .field("token", &set(&self.token))
            .field("token_file", &self.token_file)
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("creds_file", &self.creds_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

impl NatsAuth {
    /// A copy with the secret values (not the file names) replaced by `***`, for printing.
    pub fn redacted(&self) -> NatsAuth {
        let hide = |s: &str| if s.is_empty() { String::new() } else { "***".into() };
        NatsAuth {
            password: hide(&self.password),
            token: hide(&self.token),
            ..self.clone()
        }
    }

    /// Checks what can be checked without reading files: one kind of credential at most, a
    /// certificate with its key.
    pub fn validate(&self) -> Result<(), String> {
        let kinds = [
            !self.user.is_empty(),
            !self.token.is_empty() || !self.token_file.is_empty(),
            !self.nkey_seed_file.is_empty(),
            !self.creds_file.is_empty(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            return Err("give one NATS credential: user (with a password), token, nkey seed or creds file".into());
        }
        if (!self.password.is_empty() || !self.password_file.is_empty()) && self.user.is_empty() {
            return Err("a NATS password needs a user".into());
        }
        if self.tls_cert_file.is_empty() != self.tls_key_file.is_empty() {
            return Err("NATS tls_cert_file and tls_key_file go together".into());
        }
        Ok(())
    }
}

/// Reads the first line of a secret file; the error names the file, never its content.
fn secret(path: &str, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading the {what} file {path}: {e}"))?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err(format!("the {what} file {path} is empty"));
    }
    Ok(line)
}

/// The server list of `url` (comma-separated) without credentials, and the credentials of the
/// first URL that carries some: `(user, password)` or `(token, None)`.
pub fn split_credentials(url: &str) -> (String, Option<(String, Option<String>)>) {
    let mut found = None;
    let servers: Vec<String> = url
        .split(',')
        .map(|u| {
            let u = u.trim();
            let Some((scheme, rest)) = u.split_once("://") else {
                return u.to_string();
            };
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (authority, tail) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    if found.is_none() {
                        let decode = |s: &str| percent_decode(s);
                        found = Some(match userinfo.split_once(':') {
                            Some((user, pass)) => (decode(user), Some(decode(pass))),
                            None => (decode(userinfo), None),
                        });
                    }
                    format!("{scheme}://{host}{tail}")
                }
                None => u.to_string(),
            }
        })
        .collect();
    (servers.join(","), found)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Connect options for `url` with `auth`, and the server list to connect to (credentials
/// taken out of it). Errors name files and settings, never a secret.
pub async fn connect_options(url: &str, auth: &NatsAuth) -> Result<(async_nats::ConnectOptions, String), String> {
    auth.validate()?;
    let (servers, from_url) = split_credentials(url);
    let mut opts = async_nats::ConnectOptions::new();
    if !auth.creds_file.is_empty() {
        opts = opts
            .credentials_file(&auth.creds_file)
            .await
            .map_err(|e| format!("reading the NATS creds file {}: {e}", auth.creds_file))?;
    } else if !auth.nkey_seed_file.is_empty() {
        opts = opts.nkey(secret(&auth.nkey_seed_file, "NATS nkey seed")?);
    } else if !auth.token.is_empty() || !auth.token_file.is_empty() {
        let token = if auth.token.is_empty() {
            secret(&auth.token_file, "NATS token")?
        } else {
            auth.token.clone()
        };
        opts = opts.token(token);
    } else if !auth.user.is_empty() {
        let password = if !auth.password.is_empty() {
            auth.password.clone()
        } else if !auth.password_file.is_empty() {
            secret(&auth.password_file, "NATS password")?
        } else {
            String::new()
        };
        opts = opts.user_and_password(auth.user.clone(), password);
    } else if let Some((user, pass)) = from_url {
        opts = match pass {
            Some(pass) => opts.user_and_password(user, pass),
            None => opts.token(user),
        };
    }
    if !auth.tls_ca_file.is_empty() {
        opts = opts.add_root_certificates(PathBuf::from(&auth.tls_ca_file));
    }
    if !auth.tls_cert_file.is_empty() {
        opts = opts.add_client_certificate(PathBuf::from(&auth.tls_cert_file), PathBuf::from(&auth.tls_key_file));
    }
    if auth.tls_required || !auth.tls_ca_file.is_empty() || !auth.tls_cert_file.is_empty() {
        opts = opts.require_tls(true);
    }
    Ok((opts, servers))
}

/// True for a connection error that means "no server there (yet)": worth retrying.
pub fn not_there_yet(e: &async_nats::ConnectError) -> bool {
    use async_nats::ConnectErrorKind as Kind;
    match e.kind() {
        Kind::TimedOut | Kind::Dns | Kind::MaxReconnects => true,
        Kind::Io => {
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                if let Some(io) = s.downcast_ref::<std::io::Error>() {
                    // A server still starting (or restarting) may accept and drop the
                    // connection: reset, aborted, or closed before its INFO.
                    return matches!(
                        io.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::NotFound
                    );
                }
                source = s.source();
            }
            // An I/O error without a cause: most likely nothing listening.
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_still_starting_is_waited_for_and_a_refused_login_is_not() {
        use async_nats::{ConnectError, ConnectErrorKind as Kind};
        let io = |k: std::io::ErrorKind| ConnectError::with_source(Kind::Io, std::io::Error::from(k));
        for k in [
            std::io::ErrorKind::ConnectionRefused,
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::UnexpectedEof,
        ] {
            assert!(not_there_yet(&io(k)), "{k:?}");
        }
        assert!(!not_there_yet(&io(std::io::ErrorKind::PermissionDenied)));
        assert!(!not_there_yet(&ConnectError::new(Kind::AuthorizationViolation)));
        assert!(not_there_yet(&ConnectError::new(Kind::TimedOut)));
    }

    #[test]
    fn credentials_come_out_of_urls() {
        let (servers, creds) = split_credentials("nats://ann:s%40cret@a:4222, nats://b:4222");
        assert_eq!(servers, "nats://a:4222,nats://b:4222");
        assert_eq!(creds, Some(("ann".into(), Some("s@cret".into()))));
        let (servers, creds) = split_credentials("tls://tok@h:4222");
        assert_eq!(servers, "tls://h:4222");
        assert_eq!(creds, Some(("tok".into(), None)));
        assert_eq!(split_credentials("nats://h:4222"), ("nats://h:4222".into(), None));
    }

    #[test]
    fn secrets_stay_out_of_debug_and_printing() {
        let a = NatsAuth {
            user: "ann".into(),
            password: "hunter2".into(),
            token: String::new(),
            ..Default::default()
        };
        assert!(!format!("{a:?}").contains("hunter2"));
        assert_eq!(a.redacted().password, "***");
        assert!(a.validate().is_ok());
        let both = NatsAuth {
            token: "t".into(),
            ..a.clone()
        };
        assert!(both.validate().is_err());
        let orphan = NatsAuth {
            password: "x".into(),
            ..Default::default()
        };
        assert!(orphan.validate().is_err());
    }

    #[tokio::test]
    async fn a_missing_secret_file_is_named_without_content() {
        let a = NatsAuth {
            token_file: "/nonexistent/token".into(),
            ..Default::default()
        };
        let err = connect_options("nats://h:4222", &a).await.err().unwrap();
        assert!(err.contains("/nonexistent/token"), "{err}");
    }
}
