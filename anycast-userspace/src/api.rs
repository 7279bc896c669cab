//! The control API: newline-delimited JSON over a Unix socket (README, "Control API").
//!
//! The socket is created mode 0600 (root-only: the agent runs as root), in a directory created
//! mode 0700 when missing; nothing listens on the network. Each connection sends one
//! [`Request`] per line and reads one [`Response`] per line, in order. Requests go to the agent's
//! main task ([`Call`]), which owns the state, so they are applied one at a time.

use crate::error::{IoError, io_at};
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::dataplane::stats::Stats;
use crate::plan::model::Decision;
use crate::proto::{Changed, EdgeDrained, Request, Response, Status};

/// What the API and metrics tasks ask of the agent's main task.
#[derive(Debug)]
pub enum Call {
    Api(Request, oneshot::Sender<Response>),
    /// The Prometheus text of the current state.
    Metrics(oneshot::Sender<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("another agent is answering on {0}; set agent.api_socket to another path")]
    InUse(PathBuf),
    #[error("the agent's answer is not JSON: {0}")]
    Garbled(String),
}

/// Binds the socket: refuses to take over a live agent's socket, replaces a stale one.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_at("creating the socket's directory", dir))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ApiError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io_at("removing a stale socket", path))?;
    }
    let listener = UnixListener::bind(path).map_err(io_at("binding the control socket", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_at("making the control socket root-only", path))?;
    Ok(listener)
}

/// Accepts connections until the task is aborted.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, calls.clone()));
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The longest request line the agent reads; a longer one is answered with an error and skipped.
pub const MAX_LINE: usize = 64 * 1024;

/// Parses one request line (errors are answered, not fatal to the connection).
pub fn parse_request(line: &str) -> Result<Request, Response> {
    Request::from_json(line).map_err(|e| bad_request(&e))
}

fn bad_request(problem: &str) -> Response {
    Response::Error {
        error: format!(
            "bad request: {problem} (expected one JSON object per line, e.g. {{\"request\":\"status\"}})"
        ),
    }
}

/// One line read from a connection, at most [`MAX_LINE`] bytes of it kept.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line (without its newline), or the last bytes before end of stream.
    Whole(Vec<u8>),
    /// Longer than [`MAX_LINE`]: read through to its newline and dropped.
    TooLong,
    Eof,
}

/// Reads up to the next newline, keeping at most `max` bytes: a client cannot make the agent
/// hold more than that, and the connection stays in step (the next line starts after the newline).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(match (any, too_long) {
                (false, _) => Line::Eof,
                (true, true) => Line::TooLong,
                (true, false) => Line::Whole(buf),
            });
        }
        any = true;
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if !too_long {
            if buf.len() + take > max {
                too_long = true;
                buf = Vec::new();
            } else {
                buf.extend_from_slice(&chunk[..take]);
            }
        }
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Whole(buf)
            });
        }
    }
}

/// The answer to one line as read, without asking the agent: `Err` is a request for it.
fn screen(line: &Line) -> Option<Result<Request, Response>> {
    match line {
        Line::Eof => None,
        Line::TooLong => Some(Err(bad_request(&format!(
            "the line is longer than {MAX_LINE} bytes"
        )))),
        Line::Whole(bytes) => match std::str::from_utf8(bytes) {
            Err(e) => Some(Err(bad_request(&format!(
                "the line is not UTF-8 (invalid byte 0x{:02x} at offset {})",
                bytes[e.valid_up_to()],
                e.valid_up_to()
            )))),
            Ok(text) => Some(parse_request(text)),
        },
    }
}

async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let mut read = tokio::io::BufReader::new(read);
    loop {
        let line = match read_line(&mut read, MAX_LINE).await {
            Ok(line) => line,
            Err(e) => {
                debug!(error = %e, "control connection read failed");
                return;
            }
        };
        if matches!(&line, Line::Whole(b) if b.iter().all(u8::is_ascii_whitespace)) {
            continue;
        }
        let response = match screen(&line) {
            None => return,
            Some(Err(r)) => r,
            Some(Ok(req)) => {
                debug!(?req, "control request");
                let (tx, rx) = oneshot::channel();
                if calls.send(Call::Api(req, tx)).await.is_err() {
                    return;
                }
                match rx.await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
        };
        let mut out = serde_json::to_string(&response).expect("serializable");
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The CLI side: sends one request, returns the result or the agent's error message.
pub fn call(path: &Path, req: &Request) -> Result<Result<serde_json::Value, String>, ApiError> {
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(io_at(
        "connecting to the agent (is it running? is this its agent.api_socket?)",
        path,
    ))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io_at("setting a timeout", path))?;
    let mut line = serde_json::to_string(req).expect("serializable");
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(io_at("sending the request", path))?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(io_at("reading the answer", path))?;
    let r: Response =
        serde_json::from_str(&answer).map_err(|_| ApiError::Garbled(answer.trim().to_owned()))?;
    Ok(r.into_result())
}

/// What a typed call can end with besides its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The agent refused the request, saying why.
    #[error("{0}")]
    Refused(String),
    /// The agent answered something this client does not understand (another version?).
    #[error("the agent's {what} answer is not what this client understands: {error}")]
    Unexpected { what: &'static str, error: String },
}

/// The CLI side of the control socket, typed: one method per answer the callers read.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// Any request; the result as the agent sent it (what `--json` prints).
    pub fn request(&self, req: &Request) -> Result<serde_json::Value, ClientError> {
        call(&self.socket, req)?.map_err(ClientError::Refused)
    }

    /// A request whose answer has the type `T`.
    fn typed<T: serde::de::DeserializeOwned>(
        &self,
        req: &Request,
        what: &'static str,
    ) -> Result<T, ClientError> {
        let v = self.request(req)?;
        serde_json::from_value(v).map_err(|e| ClientError::Unexpected {
            what,
            error: e.to_string(),
        })
    }

    pub fn status(&self) -> Result<Status, ClientError> {
        self.typed(&Request::Status, "status")
    }

    /// Where the agent's live tables (and its own sockets) send `flow` (`ADDR:PORT -> ADDR:PORT/PROTO`).
    pub fn lookup(&self, flow: &str) -> Result<Decision, ClientError> {
        self.typed(
            &Request::Lookup {
                flow: flow.to_owned(),
            },
            "lookup",
        )
    }

    /// `drain`, `undrain` or `set-weight`: what was done and which tables changed.
    pub fn change(&self, req: &Request) -> Result<Changed, ClientError> {
        self.typed(req, "change")
    }

    /// `drain_edge` (true) or `undrain_edge` (false).
    pub fn drain_edge(&self, drained: bool) -> Result<EdgeDrained, ClientError> {
        let req = if drained {
            Request::DrainEdge
        } else {
            Request::UndrainEdge
        };
        self.typed(&req, "edge drain")
    }

    pub fn stats(&self) -> Result<Stats, ClientError> {
        self.typed(&Request::Stats, "stats")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_cut_at_the_limit_and_the_stream_stays_in_step() {
        let input = [
            b"short\n".to_vec(),
            vec![b'x'; MAX_LINE + 1],
            b"\nafter\nlast".to_vec(),
        ]
        .concat();
        // A small buffer, so lines span many reads.
        let mut r = tokio::io::BufReader::with_capacity(7, &input[..]);
        assert_eq!(
            read_line(&mut r, MAX_LINE).await.unwrap(),
            Line::Whole(b"short".to_vec())
        );
        assert_eq!(read_line(&mut r, MAX_LINE).await.unwrap(), Line::TooLong);
        assert_eq!(
            read_line(&mut r, MAX_LINE).await.unwrap(),
            Line::Whole(b"after".to_vec())
        );
        assert_eq!(
            read_line(&mut r, MAX_LINE).await.unwrap(),
            Line::Whole(b"last".to_vec())
        );
        assert_eq!(read_line(&mut r, MAX_LINE).await.unwrap(), Line::Eof);
        let exact = [vec![b'y'; MAX_LINE], b"\n".to_vec()].concat();
        let mut r = tokio::io::BufReader::new(&exact[..]);
        assert!(
            matches!(read_line(&mut r, MAX_LINE).await.unwrap(), Line::Whole(b) if b.len() == MAX_LINE)
        );
    }

    #[tokio::test]
    async fn bad_bytes_get_an_answer_and_the_connection_stays_usable() {
        let dir = std::env::temp_dir().join(format!("anycast-api-bytes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("anycast.sock");
        let listener = bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let server = tokio::spawn(serve(listener, tx));
        let actor = tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                if let Call::Api(req, reply) = call {
                    let _ = reply.send(Response::Ok {
                        result: serde_json::json!({ "got": format!("{req:?}") }),
                    });
                }
            }
        });
        let p = path.clone();
        let answers = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut ask = |bytes: &[u8]| {
                s.write_all(bytes).unwrap();
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                line
            };
            vec![
                ask(b"{\"request\":\"st\xffatus\"}\n"),
                ask(b"{\"request\":\"status\"}\n"),
                ask(&[vec![b' '; MAX_LINE + 10], b"\n".to_vec()].concat()),
                ask(b"{\"request\":\"status\",\"x\":1}\n"),
                ask(b"\n\n{\"request\":\"stats\"}\n"),
            ]
        })
        .await
        .unwrap();
        assert!(
            answers[0].starts_with(
                "{\"error\":\"bad request: the line is not UTF-8 (invalid byte 0xff at offset 14)"
            ),
            "{}",
            answers[0]
        );
        assert_eq!(answers[1], "{\"result\":{\"got\":\"Status\"}}\n");
        assert!(
            answers[2].starts_with(&format!(
                "{{\"error\":\"bad request: the line is longer than {MAX_LINE} bytes"
            )),
            "{}",
            answers[2]
        );
        assert!(
            answers[3].starts_with(
                "{\"error\":\"bad request: unknown field `x`: the status request takes no fields"
            ),
            "{}",
            answers[3]
        );
        assert_eq!(answers[4], "{\"result\":{\"got\":\"Stats\"}}\n");
        server.abort();
        actor.abort();
        let _ = server.await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn round_trip_over_a_socket_with_root_only_permissions() {
        let dir = std::env::temp_dir().join(format!("anycast-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("anycast.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        // A second agent on the same path is refused while the first answers.
        assert!(matches!(bind(&path), Err(ApiError::InUse(_))));
        let (tx, mut rx) = mpsc::channel(4);
        let server = tokio::spawn(serve(listener, tx));
        let actor = tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                if let Call::Api(req, reply) = call {
                    let r = match req {
                        Request::Status => Response::Ok {
                            result: serde_json::json!({"vips": []}),
                        },
                        other => Response::Error {
                            error: format!("no {other:?}"),
                        },
                    };
                    let _ = reply.send(r);
                }
            }
        });
        let p = path.clone();
        let (ok, err, bad, typed) = tokio::task::spawn_blocking(move || {
            let ok = call(&p, &Request::Status).unwrap();
            let err = call(&p, &Request::Stats).unwrap();
            // The typed client: a refusal is the agent's words; an answer that is not a Status
            // is said to be one.
            let client = Client::new(&p);
            let typed = (
                client.stats().unwrap_err().to_string(),
                client.status().unwrap_err().to_string(),
            );
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"{\"request\":\"explode\"}\n").unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (ok, err, line, typed)
        })
        .await
        .unwrap();
        assert_eq!(ok.unwrap()["vips"], serde_json::json!([]));
        assert_eq!(err.unwrap_err(), "no Stats");
        assert_eq!(typed.0, "no Stats");
        assert!(
            typed
                .1
                .starts_with("the agent's status answer is not what this client understands"),
            "{}",
            typed.1
        );
        assert!(
            bad.starts_with("{\"error\":\"bad request: unknown variant `explode`"),
            "{bad}"
        );
        server.abort();
        actor.abort();
        // The listener is gone (task aborted): a new agent replaces the stale socket.
        let _ = server.await;
        drop(bind(&path).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
