//! A minimal HTTP/1.1 client over a raw tokio `TcpStream`, enough to probe etcd's `/health` and
//! to talk unsigned S3 to moto without pulling an HTTP stack into every test.
//!
//! One request per connection (`Connection: close`); responses may use `Content-Length`,
//! chunked encoding, or end at EOF. Every request has a timeout, so a paused server yields an
//! error instead of a hung test.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A response: status code, headers in order, and the whole body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Sends `method path` with `headers` and `body` to `endpoint` (`http://host:port`) and reads
/// the response. `Host`, `Content-Length` and `Connection: close` are added. Err if the
/// connection fails, the response is malformed, or it does not complete within `timeout`.
pub async fn request(
    endpoint: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Response> {
    let authority = endpoint
        .strip_prefix("http://")
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    tokio::time::timeout(timeout, exchange(authority, method, path, headers, body))
        .await
        .map_err(|_| anyhow!("{method} {endpoint}{path}: no response within {timeout:?}"))?
        .with_context(|| format!("{method} {endpoint}{path}"))
}

async fn exchange(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let mut stream = TcpStream::connect(authority).await?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;

    let mut reader = BufReader::new(stream);
    let status_line = read_line(&mut reader).await?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("malformed status line {status_line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut reader).await?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("malformed header line {line:?}"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
        return Ok(response);
    }
    if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .with_context(|| format!("malformed Content-Length {length:?}"))?;
        response.body.resize(length, 0);
        reader.read_exact(&mut response.body).await?;
    } else if response
        .header("transfer-encoding")
        .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"))
    {
        response.body = read_chunked(&mut reader).await?;
    } else {
        reader.read_to_end(&mut response.body).await?;
    }
    Ok(response)
}

async fn read_chunked(reader: &mut (impl AsyncBufRead + Unpin)) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader).await?;
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16)
            .with_context(|| format!("malformed chunk size {line:?}"))?;
        if size == 0 {
            // Trailers, up to the empty line.
            while !read_line(reader).await?.is_empty() {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).await?;
        read_line(reader).await?;
    }
}

/// One line without its CRLF; Err at EOF.
async fn read_line(reader: &mut (impl AsyncBufRead + Unpin)) -> Result<String> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line).await? == 0 {
        bail!("connection closed before the response was complete");
    }
    let line = String::from_utf8_lossy(&line);
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}
