//! One HTTP/1.1 request per connection (hyper's client conn API), for the admin
//! CLI and the upload webhook: neither needs pooling, redirects or TLS.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Sends `req` over `stream` and reads the whole answer; the error as text.
pub(crate) async fn exchange(
    stream: TcpStream,
    req: Request<Full<Bytes>>,
) -> Result<Response<Bytes>, String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    drop(sender);
    driver.abort();
    Ok(Response::from_parts(parts, body))
}
