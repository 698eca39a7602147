//! A minimal admin-API client (one HTTP/1.1 request per connection, `crate::http1`),
//! used by `bucketgate status|flush|refresh` and the tests.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use super::{
    ErrorBody, FileStatus, FlushReport, FlushRequest, ReadinessBody, RefreshReport, RefreshRequest,
    StatusReport,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For every request except a flush wait without a timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the admin API at {addr}: {message} (is `bucketgate serve` running? see [admin] listen)"
    )]
    Connect { addr: SocketAddr, message: String },
    #[error("admin API at {addr}: {message}")]
    Http { addr: SocketAddr, message: String },
    /// The server answered with an error status and a JSON [`ErrorBody`].
    #[error("admin API answered {status} {}: {}", body.error, body.message)]
    Api { status: u16, body: ErrorBody },
}

/// One raw answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Clone)]
pub struct AdminClient {
    pub addr: SocketAddr,
    /// Sent as `Authorization: Bearer` (never logged or shown).
    token: Option<String>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl AdminClient {
    pub fn new(addr: SocketAddr) -> Self {
        AdminClient { addr, token: None }
    }

    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Sends one request and reads the whole answer. `timeout: None` waits for ever.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Reply, ClientError> {
        let addr = self.addr;
        let http = |message: String| ClientError::Http { addr, message };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(ClientError::Connect {
                    addr,
                    message: e.to_string(),
                });
            }
            Err(_) => {
                return Err(ClientError::Connect {
                    addr,
                    message: "connect timed out".into(),
                });
            }
        };
        let exchange = async {
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, addr.to_string());
            if body.is_some() {
                req = req.header(CONTENT_TYPE, "application/json");
            }
            if let Some(t) = &self.token {
                req = req.header(AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| http(format!("building request: {e}")))?;
            let resp = crate::http1::exchange(stream, req).await.map_err(http)?;
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            Ok(Reply {
                status: resp.status().as_u16(),
                content_type,
                body: resp.into_body(),
            })
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, exchange)
                .await
                .unwrap_or_else(|_| Err(http(format!("no answer within {}s", t.as_secs_f64())))),
            None => exchange.await,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Option<Duration>,
    ) -> Result<T, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request types serialize"));
        let r = self.request(method, path, body, timeout).await?;
        decode(self.addr, r)
    }

    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.call("GET", "/api/v1/status", None::<&()>, Some(REQUEST_TIMEOUT))
            .await
    }

    /// Where one file or directory (`/<share>/<path>`) stands with the store.
    pub async fn file_status(&self, path: &str) -> Result<FileStatus, ClientError> {
        self.call(
            "GET",
            &format!("/api/v1/status?path={}", crate::remote::encode_key(path)),
            None::<&()>,
            Some(REQUEST_TIMEOUT),
        )
        .await
    }

    /// With `req.wait` and no `req.timeout_s`, waits as long as the server does.
    pub async fn flush(&self, req: &FlushRequest) -> Result<FlushReport, ClientError> {
        let timeout = match (req.wait, req.timeout_s) {
            (false, _) => Some(REQUEST_TIMEOUT),
            // Leave the server time to answer 504 itself, with its message.
            (true, Some(t)) => Some(Duration::from_secs_f64(t.min(1e9)) + Duration::from_secs(10)),
            (true, None) => None,
        };
        self.call("POST", "/api/v1/flush", Some(req), timeout).await
    }

    pub async fn refresh(&self, req: &RefreshRequest) -> Result<RefreshReport, ClientError> {
        // A recursive refresh of a large bucket lists for a long time.
        self.call("POST", "/api/v1/refresh", Some(req), None).await
    }

    /// `/readyz`: both 200 and 503 carry a [`ReadinessBody`].
    pub async fn readiness(&self) -> Result<ReadinessBody, ClientError> {
        let r = self
            .request("GET", "/readyz", None, Some(REQUEST_TIMEOUT))
            .await?;
        serde_json::from_slice(&r.body).map_err(|e| ClientError::Http {
            addr: self.addr,
            message: format!("/readyz: {e}: {}", r.text()),
        })
    }

    pub async fn healthz(&self) -> Result<String, ClientError> {
        let r = self
            .request("GET", "/healthz", None, Some(REQUEST_TIMEOUT))
            .await?;
        if r.status != 200 {
            return Err(ClientError::Http {
                addr: self.addr,
                message: format!("/healthz answered {}", r.status),
            });
        }
        Ok(r.text())
    }

    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let r = self
            .request("GET", "/metrics", None, Some(REQUEST_TIMEOUT))
            .await?;
        if r.status != 200 {
            return Err(ClientError::Http {
                addr: self.addr,
                message: format!("/metrics answered {}", r.status),
            });
        }
        Ok(r.text())
    }
}

fn decode<T: DeserializeOwned>(addr: SocketAddr, r: Reply) -> Result<T, ClientError> {
    if (200..300).contains(&r.status) {
        return serde_json::from_slice(&r.body).map_err(|e| ClientError::Http {
            addr,
            message: format!("unexpected answer ({e}): {}", r.text()),
        });
    }
    match serde_json::from_slice::<ErrorBody>(&r.body) {
        Ok(body) => Err(ClientError::Api {
            status: r.status,
            body,
        }),
        Err(_) => Err(ClientError::Http {
            addr,
            message: format!("answered {}: {}", r.status, r.text()),
        }),
    }
}
