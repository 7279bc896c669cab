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

/// Parses one request line (errors are answered, not fatal to the connection).
pub fn parse_request(line: &str) -> Result<Request, Response> {
    serde_json::from_str(line).map_err(|e| Response::Error {
        error: format!(
            "bad request: {e} (expected one JSON object per line, e.g. {{\"request\":\"status\"}})"
        ),
    })
}

async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>) {
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        let response = match parse_request(&line) {
            Err(r) => r,
            Ok(req) => {
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
