//! A minimal HTTP/1.1 client over one keep-alive TCP connection: just what a load
//! generator needs (a request written in one piece, a status, headers, a body read by
//! `Content-Length` or chunked), so the client costs as little CPU as possible on a
//! machine it shares with the server and the database.

use std::net::SocketAddr;

use anyhow::{bail, ensure, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub struct Conn {
    host: String,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// Status line and headers of a response; the body is still to be read.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        ensure!(addr.ip().is_loopback(), "only loopback servers: {addr}");
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(Conn {
            host: addr.to_string(),
            reader: BufReader::with_capacity(256 * 1024, r),
            writer: w,
        })
    }

    /// Sends one request: head and body in a single write.
    pub async fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<()> {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        if method != "GET" || !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.writer.write_all(&bytes).await?;
        Ok(())
    }

    /// Reads the status line and headers (waits for the first byte of the answer).
    pub async fn head(&mut self) -> anyhow::Result<Head> {
        let mut line = String::new();
        self.read_line(&mut line).await?;
        let status = line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3)?.parse().ok())
            .with_context(|| format!("not an HTTP/1.1 status line: {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.read_line(&mut line).await?;
            if line.is_empty() {
                return Ok(Head { status, headers });
            }
            let (name, value) = line
                .split_once(':')
                .with_context(|| format!("malformed header {line:?}"))?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }

    /// Reads the body of `head`, handing each piece to `sink`; returns its length.
    pub async fn body(&mut self, head: &Head, mut sink: impl FnMut(&[u8])) -> anyhow::Result<u64> {
        if head.chunked() {
            let mut total = 0;
            let mut line = String::new();
            loop {
                line.clear();
                self.read_line(&mut line).await?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size, 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        line.clear();
                        self.read_line(&mut line).await?;
                        if line.is_empty() {
                            return Ok(total);
                        }
                    }
                }
                self.copy(size, &mut sink).await?;
                total += size;
                line.clear();
                self.read_line(&mut line).await?;
                ensure!(line.is_empty(), "chunk not followed by CRLF");
            }
        }
        let length: u64 = match head.header("content-length") {
            Some(v) => v.parse().context("bad Content-Length")?,
            None => bail!("response without Content-Length or chunked encoding"),
        };
        self.copy(length, &mut sink).await?;
        Ok(length)
    }

    /// Reads the start of a chunked body of `head`, handing each piece to `sink`, until
    /// at least `want` bytes came (or the body ended); returns how many came. The rest
    /// is left unread: drop the connection afterwards.
    pub async fn body_start(
        &mut self,
        head: &Head,
        want: u64,
        mut sink: impl FnMut(&[u8]),
    ) -> anyhow::Result<u64> {
        ensure!(head.chunked(), "expected a chunked body");
        let mut total = 0;
        let mut line = String::new();
        while total < want {
            line.clear();
            self.read_line(&mut line).await?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size, 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            if size == 0 {
                break;
            }
            self.copy(size, &mut sink).await?;
            total += size;
            line.clear();
            self.read_line(&mut line).await?;
        }
        Ok(total)
    }

    async fn copy(&mut self, mut n: u64, sink: &mut impl FnMut(&[u8])) -> anyhow::Result<()> {
        while n > 0 {
            let buf = self.reader.fill_buf().await?;
            ensure!(!buf.is_empty(), "connection closed inside a body");
            let take = buf.len().min(n as usize);
            sink(&buf[..take]);
            self.reader.consume(take);
            n -= take as u64;
        }
        Ok(())
    }

    /// One line without its CRLF.
    async fn read_line(&mut self, line: &mut String) -> anyhow::Result<()> {
        let n = self.reader.read_line(line).await?;
        ensure!(n > 0, "connection closed by the server");
        let trimmed = line.trim_end_matches(['\r', '\n']).len();
        line.truncate(trimmed);
        Ok(())
    }

    /// Reads a small body whole (error messages, receipts).
    pub async fn body_text(&mut self, head: &Head) -> anyhow::Result<String> {
        let mut out = Vec::new();
        self.body(head, |b| out.extend_from_slice(b)).await?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}
