//! A plain HTTP GET, enough for the metrics listener's pages (no client crate for four requests).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET `path` from `addr` over HTTP/1.0 and return the whole response, status line and headers
/// included.
pub async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = crate::within("HTTP connect", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("send GET {path} to {addr}: {e}"));
    let mut response = String::new();
    crate::within("HTTP response", stream.read_to_string(&mut response))
        .await
        .unwrap_or_else(|e| panic!("read GET {path} from {addr}: {e}"));
    response
}

/// The status code of a response [`get`] returned.
pub fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

/// The body of a response [`get`] returned.
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}
