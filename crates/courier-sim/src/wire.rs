//! The load generators' HTTP/1.1 client: one keep-alive connection, written by hand.
//!
//! The benchmark's load generator shares the machine's two cores with the server it measures,
//! so whatever it spends per request is taken from the system under test. With a general
//! client (hyper's connection task and channel, a header map per request) it used 34–38 % of
//! a core at 10K requests/s; with this one, 25–28 %. A request is one `write` of bytes
//! formatted into a reused buffer, and the answer is read into another reused buffer and
//! parsed with `httparse`, as `wrk` does. It understands what `courier serve` answers — a
//! status line, headers and a body with a `Content-Length` — and treats anything else (a
//! chunked body, a short read, extra bytes) as an error that drops the connection; the next
//! request opens a new one.

use std::io::Write as _;
use std::net::SocketAddr;
use std::ops::Range;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most headers an answer may carry.
const MAX_HEADERS: usize = 32;

/// One keep-alive connection to the server under test.
#[derive(Debug)]
pub struct Conn {
    address: SocketAddr,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    response: Vec<u8>,
}

/// An answer's status and where its body lies in the response buffer.
struct Answer {
    status: u16,
    body: Range<usize>,
    keep_alive: bool,
}

impl Conn {
    pub fn new(address: SocketAddr) -> Self {
        Self {
            address,
            stream: None,
            request: Vec::with_capacity(1024),
            response: Vec::with_capacity(8192),
        }
    }

    /// Sends one request (opening the connection first if it is new or was dropped) and reads
    /// the whole answer: its status and its body, which lives in this connection's buffer
    /// until the next request.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        authorization: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, &[u8])> {
        self.send_with(method, path, authorization, &[], body).await
    }

    /// [`Conn::send`] with more headers (`name`, `value`), e.g. an idempotency key.
    pub async fn send_with(
        &mut self,
        method: &str,
        path: &str,
        authorization: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<(u16, &[u8])> {
        self.request.clear();
        write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nhost: courier\r\nauthorization: {authorization}\r\n"
        )?;
        for (name, value) in headers {
            write!(self.request, "{name}: {value}\r\n")?;
        }
        if let Some(body) = body {
            write!(
                self.request,
                "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )?;
        } else {
            self.request.extend_from_slice(b"\r\n");
        }
        match self.exchange().await {
            Ok(answer) => {
                if !answer.keep_alive {
                    self.stream = None;
                }
                Ok((answer.status, &self.response[answer.body]))
            }
            Err(error) => {
                self.stream = None;
                Err(error)
            }
        }
    }

    async fn exchange(&mut self) -> anyhow::Result<Answer> {
        let Self {
            address,
            stream,
            request,
            response,
        } = self;
        let stream = match stream {
            Some(stream) => stream,
            None => {
                let fresh = TcpStream::connect(*address).await?;
                fresh.set_nodelay(true)?;
                stream.insert(fresh)
            }
        };
        stream.write_all(request).await?;
        response.clear();
        loop {
            if stream.read_buf(response).await? == 0 {
                bail!("the server closed the connection mid-answer");
            }
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut head = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(head_len) = head.parse(response)? else {
                continue;
            };
            let status = head.code.context("an answer without a status")?;
            let mut length = None;
            let mut keep_alive = true;
            for header in head.headers.iter() {
                if header.name.eq_ignore_ascii_case("content-length") {
                    length = Some(std::str::from_utf8(header.value)?.trim().parse::<usize>()?);
                } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("a chunked answer (only Content-Length bodies are read)");
                } else if header.name.eq_ignore_ascii_case("connection") {
                    keep_alive = !header.value.eq_ignore_ascii_case(b"close");
                }
            }
            let end = head_len + length.context("an answer without a Content-Length")?;
            while response.len() < end {
                if stream.read_buf(response).await? == 0 {
                    bail!("the server closed the connection mid-body");
                }
            }
            if response.len() > end {
                bail!("bytes after the answer on a connection with one request in flight");
            }
            return Ok(Answer {
                status,
                body: head_len..end,
                keep_alive,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// A test that goes wrong fails here instead of hanging.
    async fn bounded<T>(work: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(10), work)
            .await
            .expect("finished within 10 s")
    }

    /// A server that reads each request's head (and the body its Content-Length announces)
    /// and answers with the next canned reply, written in two pieces to force partial reads.
    async fn serve(
        replies: Vec<&'static str>,
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let (mut socket, _) = listener.accept().await.expect("accept");
            for reply in replies {
                let mut buffer = Vec::new();
                let request = loop {
                    socket.read_buf(&mut buffer).await.expect("read");
                    let mut headers = [httparse::EMPTY_HEADER; 16];
                    let mut request = httparse::Request::new(&mut headers);
                    if let Ok(httparse::Status::Complete(head)) = request.parse(&buffer) {
                        let length = request
                            .headers
                            .iter()
                            .find(|h| h.name == "content-length")
                            .map_or(0, |h| {
                                std::str::from_utf8(h.value)
                                    .expect("utf8")
                                    .parse::<usize>()
                                    .expect("length")
                            });
                        while buffer.len() < head + length {
                            socket.read_buf(&mut buffer).await.expect("read body");
                        }
                        break String::from_utf8(buffer.clone()).expect("utf8");
                    }
                };
                seen.push(request);
                let (first, second) = reply.split_at(reply.len() / 2);
                socket.write_all(first.as_bytes()).await.expect("write");
                socket.flush().await.expect("flush");
                tokio::task::yield_now().await;
                socket.write_all(second.as_bytes()).await.expect("write");
            }
            seen
        });
        (address, task)
    }

    #[tokio::test]
    async fn requests_share_one_connection_and_bodies_arrive_whole() {
        let (address, server) = serve(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\n{\"result\":\"ok\"}\n",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}",
        ])
        .await;
        let mut conn = Conn::new(address);
        let (status, body) = bounded(conn.send("POST", "/v1/x", "Bearer t", Some(r#"{"lat":1}"#)))
            .await
            .expect("first");
        assert_eq!(status, 200);
        assert_eq!(body, b"{\"result\":\"ok\"}\n");
        let (status, body) = bounded(conn.send("GET", "/v1/y?q=1", "Bearer u", None))
            .await
            .expect("second");
        assert_eq!((status, body), (404, &b"{}"[..]));
        let seen = bounded(server).await.expect("server");
        assert_eq!(
            seen[0],
            "POST /v1/x HTTP/1.1\r\nhost: courier\r\nauthorization: Bearer t\r\n\
             content-type: application/json\r\ncontent-length: 9\r\n\r\n{\"lat\":1}"
        );
        assert_eq!(
            seen[1],
            "GET /v1/y?q=1 HTTP/1.1\r\nhost: courier\r\nauthorization: Bearer u\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn answers_it_cannot_read_are_errors_and_drop_the_connection() {
        for reply in [
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n{}",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}extra",
        ] {
            let (address, server) = serve(vec![reply]).await;
            let mut conn = Conn::new(address);
            assert!(
                conn.send("GET", "/", "Bearer t", None).await.is_err(),
                "{reply}"
            );
            assert!(conn.stream.is_none());
            server.await.expect("server");
        }
    }

    #[tokio::test]
    async fn a_closed_connection_is_reopened_for_the_next_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut socket, _) = listener.accept().await.expect("accept");
                let mut buffer = [0_u8; 1024];
                let _ = socket.read(&mut buffer).await.expect("read");
                socket
                    .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .expect("write");
            }
        });
        let mut conn = Conn::new(address);
        for _ in 0..2 {
            let (status, body) = bounded(conn.send("GET", "/", "Bearer t", None))
                .await
                .expect("send");
            assert_eq!((status, body.len()), (200, 0));
        }
        bounded(server).await.expect("server");
    }
}
