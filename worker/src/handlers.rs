//! Built-in handlers of the `worker` binary.
//!
//! - `noop`: succeeds at once with `null`.
//! - `sleep` `{"durationMs": N}`: sleeps N ms (up to one hour), reporting progress.
//! - `http.fetch` `{"url": "..."}`: GETs the URL; result `{"status", "body"}` (body parsed as
//!   JSON when it is JSON, cut at 1 MiB). 5xx and 429 are retryable failures, other 4xx fatal.
//!   Loopback, private, link-local, multicast and other non-public addresses are refused
//!   (after name resolution, and on every redirect) unless `WorkerConfig::fetch_allow` lists
//!   their network: a job must not make the worker reach into its own network.
//! - `fail` `{"probability": p}`: fails (retryably) with probability p (default 1).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{HandlerError, JobContext, Worker};

/// Largest response body `http.fetch` keeps.
const MAX_BODY: usize = 1 << 20;

/// Redirects `http.fetch` follows.
const MAX_REDIRECTS: usize = 5;

/// An IP network, `10.0.0.0/8` or `fd00::/8` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Net, String> {
        let bad = || format!("{s:?} is not a network (10.0.0.0/8, 127.0.0.1, fd00::/8)");
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Net { addr, prefix })
    }
}

impl Net {
    fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip {
                IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
                IpAddr::V6(v6) => (u128::from(v6), 128),
            }
        };
        let ((net, w1), (addr, w2)) = (bits(self.addr), bits(ip));
        if w1 != w2 {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        net & mask == addr & mask
    }
}

/// True for addresses a job may not make the worker reach by default: loopback, private,
/// shared (CGNAT), link-local, multicast, broadcast, unspecified, documentation and reserved
/// IPv4, unique-local and link-local IPv6, and IPv4 addresses written as IPv6.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg[0] & 0xffc0) == 0xfe80 // link local fe80::/10
                || (seg[0] == 0 && seg[1] == 0 && seg[2] == 0 && seg[3] == 0 && seg[4] == 0) // ::/80, IPv4-compatible
                || seg[0] == 0x2001 && seg[1] == 0x0db8 // documentation
                || seg[0] == 0x64 && seg[1] == 0xff9b // NAT64 of any IPv4
        }
    }
}

/// Which addresses `http.fetch` may reach.
#[derive(Debug, Clone, Default)]
pub struct FetchPolicy {
    /// Networks allowed even though they are internal.
    pub allow: Vec<Net>,
}

impl FetchPolicy {
    pub fn allows(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.allow.iter().any(|n| n.contains(ip))
    }
}

/// The error of a refused target; found in a request error's sources.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: http.fetch does not reach loopback, private, link-local or multicast addresses \
             unless the worker allows their network (--fetch-allow)",
            self.0
        )
    }
}

impl std::error::Error for Refused {}

/// Resolves names with the system resolver and keeps only the addresses the policy allows.
struct GuardedResolver(Arc<FetchPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found.iter().copied().filter(|a| policy.allows(a.ip())).collect();
            if allowed.is_empty() && !found.is_empty() {
                return Err(Box::new(Refused(format!("{host} resolves to {}", found[0].ip())))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Refuses a URL whose host is an address literal the policy does not allow (names are
/// checked by the resolver).
fn check_literal(policy: &FetchPolicy, url: &reqwest::Url) -> Result<(), Refused> {
    // The URL parser writes every IPv4 form (2130706433, 0x7f.1) as dotted decimal.
    let host = url.host_str().unwrap_or("");
    let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() else {
        return Ok(());
    };
    if policy.allows(ip) {
        Ok(())
    } else {
        Err(Refused(ip.to_string()))
    }
}

/// The HTTP client of `http.fetch`: no proxy (a proxy would be the one reaching the target),
/// every name resolved through the policy, every redirect checked.
pub fn fetch_client(policy: FetchPolicy) -> reqwest::Client {
    let policy = Arc::new(policy);
    let redirects = policy.clone();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver(policy)))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match check_literal(&redirects, attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        }))
        .build()
        .unwrap_or_default()
}

/// Adds every built-in handler to `w`; `http.fetch` reaches what `policy` allows.
pub fn register(w: Worker, policy: FetchPolicy) -> Worker {
    let client = fetch_client(policy.clone());
    let policy = Arc::new(policy);
    w.handler("noop", |_ctx| async { Ok(Value::Null) })
        .handler("sleep", sleep)
        .handler("fail", fail)
        .handler("http.fetch", move |ctx| fetch(client.clone(), policy.clone(), ctx))
}

async fn sleep(ctx: JobContext) -> Result<Value, HandlerError> {
    let ms = ctx
        .payload
        .get("durationMs")
        .and_then(Value::as_u64)
        .ok_or_else(|| HandlerError::fatal("sleep wants {\"durationMs\": N}"))?;
    if ms > 3_600_000 {
        return Err(HandlerError::fatal("durationMs must be at most 3600000"));
    }
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_millis(ms);
    while tokio::time::Instant::now() < end {
        tokio::time::sleep_until(end.min(tokio::time::Instant::now() + Duration::from_secs(1))).await;
        let done = start.elapsed().as_millis() as u64;
        ctx.set_progress(json!({"sleptMs": done.min(ms), "durationMs": ms}));
    }
    Ok(json!({"sleptMs": ms}))
}

async fn fail(ctx: JobContext) -> Result<Value, HandlerError> {
    let p = ctx.payload.get("probability").and_then(Value::as_f64).unwrap_or(1.0);
    if rand::random::<f64>() < p {
        Err(HandlerError::retryable(format!(
            "fail handler: injected failure (probability {p})"
        )))
    } else {
        Ok(json!({"failed": false}))
    }
}

async fn fetch(client: reqwest::Client, policy: Arc<FetchPolicy>, ctx: JobContext) -> Result<Value, HandlerError> {
    let url = ctx
        .payload
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| HandlerError::fatal("http.fetch wants {\"url\": \"...\"}"))?;
    fetch_url(&client, &policy, url).await
}

/// GETs `url` with `client` (from [`fetch_client`] with the same policy): the result of
/// `http.fetch`.
pub async fn fetch_url(client: &reqwest::Client, policy: &FetchPolicy, url: &str) -> Result<Value, HandlerError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| HandlerError::fatal(format!("url {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(HandlerError::fatal("url must be http:// or https://"));
    }
    check_literal(policy, &parsed).map_err(|r| HandlerError::fatal(format!("GET {url}: {r}")))?;
    let mut resp = client.get(parsed).send().await.map_err(|e| {
        // A refused target (by name, or by a redirect) is not worth retrying.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(r) = s.downcast_ref::<Refused>() {
                return HandlerError::fatal(format!("GET {url}: {r}"));
            }
            source = s.source();
        }
        HandlerError::retryable(format!("GET {url}: {e}"))
    })?;
    let status = resp.status().as_u16();
    // Read at most MAX_BODY bytes, then stop: a huge body is cut, not downloaded.
    let mut bytes = Vec::new();
    while bytes.len() < MAX_BODY {
        match resp.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk[..chunk.len().min(MAX_BODY - bytes.len())]),
            Ok(None) => break,
            Err(e) => return Err(HandlerError::retryable(format!("reading {url}: {e}"))),
        }
    }
    drop(resp);
    let body = serde_json::from_slice::<Value>(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    match status {
        500..=599 | 429 => Err(HandlerError::retryable(format!("GET {url}: HTTP {status}"))),
        400..=499 => Err(HandlerError::fatal(format!("GET {url}: HTTP {status}"))),
        _ => Ok(json!({"status": status, "body": body})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "224.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip} is internal");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "2606:4700::1111"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn networks_parse_and_contain() {
        let n: Net = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains("10.200.1.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(!n.contains("::ffff:10.0.0.1".parse().unwrap()), "families never mix");
        let host: Net = "127.0.0.2".parse().unwrap();
        assert!(host.contains("127.0.0.2".parse().unwrap()) && !host.contains("127.0.0.1".parse().unwrap()));
        let v6: Net = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Net>().is_err(), "{bad}");
        }
    }

    /// Serves `response` to every connection on `ip`; its URL.
    async fn serve(ip: &str, response: String) -> String {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let response = response.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let _ = sock.write_all(response.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/")
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn redirect(to: &str) -> String {
        format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    }

    /// Pass: with 127.0.0.2 allowed and nothing else, a target on 127.0.0.2 is fetched; the
    /// same target on 127.0.0.1, by address or as `localhost`, and redirects from the allowed
    /// server to either, are refused as fatal errors; with no allowance even 127.0.0.2 is.
    #[tokio::test]
    async fn internal_targets_are_refused_after_resolution_and_on_redirects() {
        let policy = FetchPolicy {
            allow: vec!["127.0.0.2/32".parse().unwrap()],
        };
        let client = fetch_client(policy.clone());
        let allowed = serve("127.0.0.2", ok(r#"{"fine":true}"#)).await;
        let got = fetch_url(&client, &policy, &allowed).await.unwrap();
        assert_eq!(got, json!({"status": 200, "body": {"fine": true}}));

        let loopback = serve("127.0.0.1", ok("secret")).await;
        let port = loopback.rsplit(':').next().unwrap().trim_end_matches('/');
        let by_name = format!("http://localhost:{port}/");
        let as_number = format!("http://2130706433:{port}/");
        let via_redirect = serve("127.0.0.2", redirect(&loopback)).await;
        let via_named_redirect = serve("127.0.0.2", redirect(&by_name)).await;
        for url in [&loopback, &by_name, &as_number, &via_redirect, &via_named_redirect] {
            let err = fetch_url(&client, &policy, url).await.unwrap_err();
            assert!(!err.retryable, "{url}: {}", err.message);
            assert!(err.message.contains("does not reach"), "{url}: {}", err.message);
        }
        let strict = FetchPolicy::default();
        let err = fetch_url(&fetch_client(strict.clone()), &strict, &allowed)
            .await
            .unwrap_err();
        assert!(err.message.contains("does not reach"), "{}", err.message);
        let err = fetch_url(&client, &policy, "http://169.254.169.254/latest/meta-data/")
            .await
            .unwrap_err();
        assert!(
            !err.retryable && err.message.contains("169.254.169.254"),
            "{}",
            err.message
        );
    }

    /// Pass: a body that never ends is cut at the cap and the call returns (it would hang if
    /// the whole body were read first).
    #[tokio::test]
    async fn reading_stops_at_the_size_cap() {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let _ = sock.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n").await;
                    let chunk = vec![b'a'; 64 * 1024];
                    while sock.write_all(&chunk).await.is_ok() {}
                });
            }
        });
        let policy = FetchPolicy {
            allow: vec!["127.0.0.1".parse().unwrap()],
        };
        let got = tokio::time::timeout(
            Duration::from_secs(20),
            fetch_url(&fetch_client(policy.clone()), &policy, &format!("http://{addr}/")),
        )
        .await
        .expect("returns at the cap")
        .unwrap();
        assert_eq!(got["body"].as_str().unwrap().len(), MAX_BODY);
    }
}
