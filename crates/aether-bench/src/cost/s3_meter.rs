//! What reaches the S3 server: an HTTP/1.1 proxy in front of it that counts requests by kind,
//! bytes each way, and the time at least one request was outstanding ("busy").
//!
//! HTTP/1.1 clients (object_store's reqwest) send one request at a time per connection and
//! wait for its response, so each connection is served as a loop: read a whole request,
//! forward it, read the whole response, forward it. A benchmark tool: bodies are buffered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Counters since the meter started; subtract two snapshots for an interval.
#[derive(Clone, Debug, Default)]
pub struct S3Counts {
    /// Requests by kind: `PUT`, `GET`, `HEAD`, `DELETE`, `POST`, `LIST` (a GET with
    /// `list-type`).
    pub requests: BTreeMap<String, u64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Time with at least one request outstanding.
    pub busy: Duration,
}

impl S3Counts {
    /// `self - earlier`.
    pub fn since(&self, earlier: &S3Counts) -> S3Counts {
        let requests = self
            .requests
            .iter()
            .map(|(k, v)| (k.clone(), v - earlier.requests.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        S3Counts {
            requests,
            bytes_up: self.bytes_up - earlier.bytes_up,
            bytes_down: self.bytes_down - earlier.bytes_down,
            busy: self.busy.saturating_sub(earlier.busy),
        }
    }
}

#[derive(Default)]
struct Shared {
    counts: S3Counts,
    outstanding: usize,
    busy_since: Option<Instant>,
    /// Request lines, while recording.
    recording: Option<Vec<String>>,
}

impl Shared {
    fn begin(&mut self) {
        if self.outstanding == 0 {
            self.busy_since = Some(Instant::now());
        }
        self.outstanding += 1;
    }

    fn end(&mut self, kind: String, up: u64, down: u64) {
        self.outstanding -= 1;
        if self.outstanding == 0 {
            if let Some(since) = self.busy_since.take() {
                self.counts.busy += since.elapsed();
            }
        }
        *self.counts.requests.entry(kind).or_default() += 1;
        self.counts.bytes_up += up;
        self.counts.bytes_down += down;
    }
}

/// The proxy; stops with the runtime.
pub struct S3Meter {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
}

impl S3Meter {
    pub async fn start(upstream: SocketAddr) -> Result<S3Meter> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let state = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = serve(client, server, state).await;
                    }
                });
            }
        });
        Ok(S3Meter { addr, shared })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts keeping the request line of every request.
    pub fn record(&self) {
        self.shared.lock().expect("meter").recording = Some(Vec::new());
    }

    /// The request lines kept since [`S3Meter::record`]; stops keeping them.
    pub fn recorded(&self) -> Vec<String> {
        self.shared
            .lock()
            .expect("meter")
            .recording
            .take()
            .unwrap_or_default()
    }

    pub fn snapshot(&self) -> S3Counts {
        let shared = self.shared.lock().expect("meter");
        let mut counts = shared.counts.clone();
        if let Some(since) = shared.busy_since {
            counts.busy += since.elapsed();
        }
        counts
    }
}

/// One HTTP message's head and body, as bytes to forward.
struct Message {
    bytes: Vec<u8>,
    first_line: String,
}

async fn serve(client: TcpStream, server: TcpStream, shared: Arc<Mutex<Shared>>) -> Result<()> {
    let (client_read, mut client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    let mut client_read = BufReader::new(client_read);
    let mut server_read = BufReader::new(server_read);
    loop {
        let Some(request) = read_message(&mut client_read, false).await? else {
            return Ok(());
        };
        {
            let mut shared = shared.lock().expect("meter");
            shared.begin();
            if let Some(lines) = shared.recording.as_mut() {
                lines.push(request.first_line.clone());
            }
        }
        let mut parts = request.first_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("");
        let kind = if method == "GET" && target.contains("list-type") {
            "LIST".to_string()
        } else {
            method.clone()
        };
        let result = async {
            server_write.write_all(&request.bytes).await?;
            let response = read_message(&mut server_read, method == "HEAD")
                .await?
                .context("the S3 server closed the connection")?;
            client_write.write_all(&response.bytes).await?;
            anyhow::Ok(response.bytes.len() as u64)
        }
        .await;
        let down = *result.as_ref().unwrap_or(&0);
        shared
            .lock()
            .expect("meter")
            .end(kind, request.bytes.len() as u64, down);
        result?;
    }
}

/// Largest HTTP message the meter forwards: the store writes objects of at most 8 MiB (a chunk)
/// and the bus segments of a few MiB, so anything larger is refused, not allocated.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Longest head or chunk-size line.
const MAX_LINE_BYTES: u64 = 64 * 1024;

/// Reads one line of at most [`MAX_LINE_BYTES`] (with its newline) onto `bytes`.
async fn read_line<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> Result<usize> {
    let read = (&mut *reader)
        .take(MAX_LINE_BYTES)
        .read_until(b'\n', line)
        .await?;
    if read as u64 == MAX_LINE_BYTES && line.last() != Some(&b'\n') {
        bail!("an HTTP line over {MAX_LINE_BYTES} bytes");
    }
    Ok(read)
}

/// Reads one request or response: head, then a body of Content-Length bytes or chunks.
/// None at a clean end of stream before a message. Sizes from headers are checked against
/// [`MAX_MESSAGE_BYTES`] before anything is allocated for them.
async fn read_message<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    no_body: bool,
) -> Result<Option<Message>> {
    let Some(head) = read_head(reader).await? else {
        return Ok(None);
    };
    let Head {
        mut bytes,
        first_line,
        length,
        chunked,
    } = head;
    let status_without_body = first_line.starts_with("HTTP/1.1 204")
        || first_line.starts_with("HTTP/1.1 304")
        || first_line.starts_with("HTTP/1.1 1");
    if no_body || status_without_body {
        return Ok(Some(Message { bytes, first_line }));
    }
    if chunked {
        read_chunked_body(reader, &mut bytes).await?;
    } else {
        if length > MAX_MESSAGE_BYTES {
            bail!("an HTTP body of {length} bytes is over {MAX_MESSAGE_BYTES}");
        }
        let start = bytes.len();
        bytes.resize(start + length, 0);
        reader.read_exact(&mut bytes[start..]).await?;
    }
    Ok(Some(Message { bytes, first_line }))
}

/// A message head as read, with what it says of the body.
struct Head {
    /// The head's bytes, as received.
    bytes: Vec<u8>,
    first_line: String,
    /// Content-Length (0 when absent).
    length: usize,
    /// Transfer-Encoding: chunked.
    chunked: bool,
}

/// Reads a message head up to its empty line. None at a clean end of stream before it.
async fn read_head<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> Result<Option<Head>> {
    let mut head = Head {
        bytes: Vec::new(),
        first_line: String::new(),
        length: 0,
        chunked: false,
    };
    loop {
        let mut line = Vec::new();
        if read_line(reader, &mut line).await? == 0 {
            if head.bytes.is_empty() {
                return Ok(None);
            }
            bail!("connection closed inside a message head");
        }
        head.bytes.extend_from_slice(&line);
        if head.bytes.len() > MAX_MESSAGE_BYTES {
            bail!("an HTTP head over {MAX_MESSAGE_BYTES} bytes");
        }
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        if head.first_line.is_empty() {
            head.first_line = text;
            continue;
        }
        if text.is_empty() {
            return Ok(Some(head));
        }
        if let Some((name, value)) = text.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                head.length = value.parse().context("bad content-length")?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = value.eq_ignore_ascii_case("chunked");
            }
        }
    }
}

/// Reads a chunked body, through its last (empty) chunk, onto `bytes`.
async fn read_chunked_body<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    bytes: &mut Vec<u8>,
) -> Result<()> {
    loop {
        let mut line = Vec::new();
        read_line(reader, &mut line).await?;
        bytes.extend_from_slice(&line);
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&line)
                .trim()
                .split(';')
                .next()
                .unwrap_or(""),
            16,
        )
        .context("bad chunk size")?;
        if size > MAX_MESSAGE_BYTES.saturating_sub(bytes.len()) {
            bail!("an HTTP message over {MAX_MESSAGE_BYTES} bytes");
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).await?;
        bytes.extend_from_slice(&chunk);
        if size == 0 {
            return Ok(());
        }
    }
}
