//! The HTTP/1.1 server behind the admin listener (hyper 1, no framework).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{AdminApi, ApiError, ErrorBody, FlushRequest, ReadinessBody, RefreshRequest};
use crate::conns::Registry;
use crate::metrics::Metrics;

/// Largest request body accepted; admin requests are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Connections open at once, and from one peer address. Scrapers and operators need
/// a handful; past a limit, the connection idle the longest is closed for the
/// newcomer (which is refused only when none is idle), so a peer that hoards idle
/// sockets cannot keep `/healthz` from answering.
const MAX_CONNECTIONS: usize = 256;
const MAX_CONNECTIONS_PER_PEER: usize = 16;
/// A connection that sends nothing within this is closed.
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// A client must send its request headers within this, and its body within this.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, connections get this long to finish (a flush wait is cut short).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Longest flush wait a client may ask for (a year; keeps Duration math finite).
const MAX_FLUSH_TIMEOUT_S: f64 = 365.0 * 86400.0;

type Body = Full<Bytes>;

/// Who may call `/api/v1/*` (`/metrics`, `/healthz` and `/readyz` are open).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiAccess {
    /// Anyone who reaches the listener: a loopback listener without a token.
    Open,
    /// Requests with `Authorization: Bearer <token>`.
    Token(String),
    /// Only peers on this host (loopback): a listener reachable from the network
    /// with no token configured.
    LocalOnly,
}

/// Serves the admin API on `listener` until `shutdown` completes, then lets open
/// connections finish for a few seconds and returns.
///
/// `api` calls may be cancelled (a client that disconnects drops its request's
/// future), so implementations must be cancel-safe: a dropped flush wait must not
/// stop the uploads it waited for.
pub async fn serve_admin(
    listener: TcpListener,
    api: Arc<dyn AdminApi>,
    metrics: Metrics,
    access: ApiAccess,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let registry = Arc::new(Registry::default());
    let access = Arc::new(access);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin API listening");
    }
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Reap finished connection tasks so the set does not grow for ever.
        while conns.try_join_next().is_some() {}
        let ip = peer.ip();
        let full = |n: usize, limit: usize, of: Option<std::net::IpAddr>| {
            n >= limit && !registry.shed_oldest_idle(of)
        };
        if full(registry.count(ip), MAX_CONNECTIONS_PER_PEER, Some(ip))
            || full(registry.total(), MAX_CONNECTIONS, None)
        {
            tracing::debug!(%peer, "admin connection refused: at the connection limit with none idle");
            continue;
        }
        let registered = Arc::new(registry.register(ip));
        let api = api.clone();
        let metrics = metrics.clone();
        let access = access.clone();
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            // Nothing sent: not a client, or one holding a slot.
            let mut first = [0u8; 1];
            let close = registered.close.clone();
            tokio::select! {
                r = tokio::time::timeout(FIRST_BYTE_TIMEOUT, stream.peek(&mut first)) => {
                    if !matches!(r, Ok(Ok(1..))) {
                        return;
                    }
                }
                _ = close.cancelled() => return,
            }
            let svc = {
                let registered = registered.clone();
                service_fn(move |req| {
                    let (api, metrics, access, registered) =
                        (api.clone(), metrics.clone(), access.clone(), registered.clone());
                    async move {
                        registered.set_idle(false);
                        let resp = route(req, api.as_ref(), &metrics, &access, ip).await;
                        registered.set_idle(true);
                        Ok::<_, Infallible>(resp)
                    }
                })
            };
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = close.cancelled() => return,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        conns.abort_all();
    }
    Ok(())
}

async fn route(
    req: Request<Incoming>,
    api: &dyn AdminApi,
    metrics: &Metrics,
    access: &ApiAccess,
    peer: std::net::IpAddr,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_owned);
    let method = req.method().clone();
    if path.starts_with("/api/")
        && let Some(refused) = refuse(&req, access, peer)
    {
        return refused;
    }
    let allowed: &str = match path.as_str() {
        "/metrics" | "/healthz" | "/readyz" | "/api/v1/status" => "GET, HEAD",
        "/api/v1/flush" | "/api/v1/refresh" => "POST",
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such endpoint: {path}"),
            );
        }
    };
    let get = method == Method::GET || method == Method::HEAD;
    if !(get && allowed.starts_with("GET") || method == Method::POST && allowed == "POST") {
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} takes {allowed}"),
        );
        r.headers_mut().insert(
            ALLOW,
            HeaderValue::from_static(if allowed == "POST" { "POST" } else { "GET, HEAD" }),
        );
        return r;
    }
    let mut resp = match path.as_str() {
        "/metrics" => {
            let checks: Vec<(String, bool)> = api
                .readiness()
                .checks
                .into_iter()
                .map(|c| (c.name, c.ok))
                .collect();
            metrics.set_readiness(&checks);
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render(),
            )
        }
        "/healthz" => text(StatusCode::OK, "text/plain; charset=utf-8", "ok".into()),
        "/readyz" => {
            let r = api.readiness();
            let ready = r.is_ready();
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(
                code,
                &ReadinessBody {
                    ready,
                    checks: r.checks,
                },
            )
        }
        "/api/v1/status" => match query.as_deref().map(|q| query_param(q, "path")) {
            None | Some(None) => json(StatusCode::OK, &api.status().await),
            Some(Some(Err(e))) => api_error(&e),
            Some(Some(Ok(p))) => match check_path(Some(&p)) {
                Err(e) => api_error(&e),
                Ok(()) => match api.file_status(&p).await {
                    Ok(f) => json(StatusCode::OK, &f),
                    Err(e) => api_error(&e),
                },
            },
        },
        "/api/v1/flush" => match read_json::<FlushRequest>(req).await {
            Err(r) => r,
            Ok(f) => match check_flush(&f) {
                Err(e) => api_error(&e),
                Ok(()) => {
                    let limit = f.timeout_s.filter(|_| f.wait).map(Duration::from_secs_f64);
                    let fut = api.flush(f);
                    let res = match limit {
                        Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
                            Err(ApiError::Timeout(format!(
                                "not everything was uploaded within {}s; uploads continue",
                                t.as_secs_f64()
                            )))
                        }),
                        None => fut.await,
                    };
                    match res {
                        Ok(rep) => json(StatusCode::OK, &rep),
                        Err(e) => api_error(&e),
                    }
                }
            },
        },
        "/api/v1/refresh" => match read_json::<RefreshRequest>(req).await {
            Err(r) => r,
            Ok(r) => match check_path(r.path.as_deref()) {
                Err(e) => api_error(&e),
                Ok(()) => match api.refresh(r).await {
                    Ok(rep) => json(StatusCode::OK, &rep),
                    Err(e) => api_error(&e),
                },
            },
        },
        _ => unreachable!("paths matched above"),
    };
    if method == Method::HEAD {
        *resp.body_mut() = Full::new(Bytes::new());
    }
    resp
}

/// Why an `/api/` request is not let through.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// No token, or the wrong one.
    Unauthorized,
    /// Another host, and no token is configured.
    Forbidden,
}

/// Whether `access` lets an `/api/` request from `peer` through, with the request's
/// `Authorization` header `auth`.
fn admit(auth: Option<&str>, access: &ApiAccess, peer: std::net::IpAddr) -> Result<(), Refusal> {
    match access {
        ApiAccess::Open => Ok(()),
        ApiAccess::LocalOnly if crate::config::canonical_ip(peer).is_loopback() => Ok(()),
        ApiAccess::LocalOnly => Err(Refusal::Forbidden),
        ApiAccess::Token(token) => {
            let sent = auth.and_then(|v| v.strip_prefix("Bearer "));
            match sent.is_some_and(|s| same_secret(s.trim().as_bytes(), token.as_bytes())) {
                true => Ok(()),
                false => Err(Refusal::Unauthorized),
            }
        }
    }
}

/// The answer to an `/api/` request from `peer` that `access` does not let through.
fn refuse(req: &Request<Incoming>, access: &ApiAccess, peer: std::net::IpAddr) -> Option<Response<Body>> {
    let auth = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    match admit(auth, access, peer).err()? {
        Refusal::Forbidden => Some(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the admin API answers only this host's own clients unless admin.token_file is set".into(),
        )),
        Refusal::Unauthorized => {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this endpoint needs `Authorization: Bearer <token>` (the token in admin.token_file)".into(),
            );
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            Some(r)
        }
    }
}

/// Compares in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of `name` in a query string (`a=1&path=%2Fdata%2Fx`), percent-decoded
/// (`+` is a space, as forms encode it); `None` when it is not there.
fn query_param(query: &str, name: &str) -> Option<Result<String, ApiError>> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
    let bad = || ApiError::BadRequest(format!("`{name}` is not percent-encoded UTF-8"));
    // Every '%' starts an escape of two hex digits (the decoder would pass others on).
    let escapes_whole = raw
        .split('%')
        .skip(1)
        .all(|e| e.len() >= 2 && e.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit));
    if !escapes_whole {
        return Some(Err(bad()));
    }
    Some(crate::remote::url_decode(raw).ok_or_else(bad))
}

fn check_path(path: Option<&str>) -> Result<(), ApiError> {
    match path {
        Some(p) if !p.starts_with('/') => Err(ApiError::BadRequest(format!(
            "path `{p}` must start with '/' (/<share>/...)"
        ))),
        Some(p) if p.split('/').any(|s| s == "." || s == "..") => Err(ApiError::BadRequest(format!(
            "path `{p}` must not contain `.` or `..`"
        ))),
        _ => Ok(()),
    }
}

fn check_flush(f: &FlushRequest) -> Result<(), ApiError> {
    check_path(f.path.as_deref())?;
    if let Some(t) = f.timeout_s {
        if !(t.is_finite() && t > 0.0 && t <= MAX_FLUSH_TIMEOUT_S) {
            return Err(ApiError::BadRequest(format!(
                "timeout_s must be a number of seconds in (0, {MAX_FLUSH_TIMEOUT_S}]"
            )));
        }
        if !f.wait {
            return Err(ApiError::BadRequest(
                "timeout_s only applies with wait: true".into(),
            ));
        }
    }
    Ok(())
}

/// Reads a bounded JSON body; an empty body is the type's default (`{}`).
async fn read_json<T: DeserializeOwned + Default>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body over {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(READ_TIMEOUT, body.collect()).await {
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "request body not received in time".into(),
            ));
        }
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return Err(too_large());
        }
        Ok(Err(e)) => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading body: {e}"),
            ));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid JSON body: {e}"),
        )
    })
}

fn text(code: StatusCode, ctype: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

fn json<T: Serialize>(code: StatusCode, v: &T) -> Response<Body> {
    match serde_json::to_string_pretty(v) {
        Ok(mut s) => {
            s.push('\n');
            text(code, "application/json", s)
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("encoding JSON: {e}"),
        ),
    }
}

fn error(code: StatusCode, kind: &str, message: String) -> Response<Body> {
    json(
        code,
        &ErrorBody {
            error: kind.to_string(),
            message,
        },
    )
}

fn api_error(e: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(code, &e.body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_percent_decoded() {
        let q = |s: &str| query_param(s, "path").map(|r| r.map_err(|e| e.to_string()));
        assert_eq!(q("path=%2Fdata%2Fa%20b+c"), Some(Ok("/data/a b c".into())));
        assert_eq!(q("x=1&path=/data/%C3%A9t%C3%A9"), Some(Ok("/data/été".into())));
        assert_eq!(q("x=1"), None);
        assert_eq!(q("paths=/x"), None);
        assert!(q("path=%2").unwrap().is_err());
        assert!(q("path=%zz").unwrap().is_err());
        assert!(q("path=%ff").unwrap().is_err(), "not UTF-8");
    }

    /// Without a token, a network listener answers the API to this host's own
    /// clients only (an IPv4-mapped loopback address is one); with a token, to
    /// whoever sends it, from anywhere.
    #[test]
    fn who_may_call_the_api() {
        let (local, mapped, remote) = (
            "127.0.0.1".parse().unwrap(),
            "::ffff:127.0.0.1".parse().unwrap(),
            "10.1.2.3".parse().unwrap(),
        );
        assert_eq!(admit(None, &ApiAccess::Open, remote), Ok(()));
        assert_eq!(admit(None, &ApiAccess::LocalOnly, local), Ok(()));
        assert_eq!(admit(None, &ApiAccess::LocalOnly, mapped), Ok(()));
        assert_eq!(
            admit(None, &ApiAccess::LocalOnly, remote),
            Err(Refusal::Forbidden)
        );
        let t = ApiAccess::Token("0123456789abcdef".into());
        assert_eq!(admit(Some("Bearer 0123456789abcdef"), &t, remote), Ok(()));
        assert_eq!(
            admit(Some("Bearer 0123456789abcdeF"), &t, local),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            admit(Some("0123456789abcdef"), &t, local),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(admit(None, &t, local), Err(Refusal::Unauthorized));
    }
}
