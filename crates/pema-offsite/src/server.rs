//! The PLM owner's HTTP service (`pema serve`): routes, bearer authentication, body limits and
//! graceful shutdown around the step loop of [`crate::scheduler`].
//!
//! Routes (all under `/v1`, all behind `Authorization: Bearer <token>`):
//!
//! | route | body in | body out |
//! |---|---|---|
//! | `GET /v1/info` | – | [`ServerInfo`] (JSON) |
//! | `GET /v1/head` | – | [`HeadMessage`] (binary) |
//! | `GET /v1/tokenizer` | – | [`pema_backbone::TokenizerSpec`] (JSON) |
//! | `POST /v1/sessions` | [`OpenSession`] | [`StepReply`] |
//! | `POST /v1/sessions/{id}/tokens` | [`Tokens`] | [`StepReply`] (no rows: done) |
//! | `DELETE /v1/sessions/{id}` | – | – |
//! | `POST /v1/teacher-forced` (header `x-pema-disclose-targets: yes`) | [`TeacherForced`] | [`Contexts`] |
//!
//! Errors are plain text with the status of [`ServiceError::status`] (401 for a missing or
//! wrong token, 413 for a body over the limit). Nothing a client sends is logged.

use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::serve::ListenerExt;
use burn::tensor::backend::Backend;
use pema_backbone::{Engine, PemaTokenizer, Plm};
use sha2::{Digest, Sha256};
use tokio::sync::{Notify, oneshot};

use crate::protocol::{self, HeadMessage, OpenSession, PackedHead, TeacherForced, Tokens};
use crate::scheduler::{Command, Scheduler, ServeStats};
use crate::{DEFAULT_IDLE_TIMEOUT, Limits, ServiceError};

/// Header a client sets to accept that teacher forcing sends its targets to the PLM owner.
pub const DISCLOSE_TARGETS_HEADER: &str = "x-pema-disclose-targets";

/// What the server tells every client first (JSON at `GET /v1/info`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServerInfo {
    /// Protocol version ([`protocol::VERSION`]).
    pub protocol: u8,
    /// Model name.
    pub model: String,
    /// Hidden size d.
    pub hidden_size: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Number of blocks (f(c) is the last block's output, before the final norm).
    pub n_layers: usize,
    /// sha256 of the model's weight files (recorded in memories).
    pub weights_sha256: String,
    /// The head's fingerprint.
    pub head_fingerprint: String,
    /// The tokenizer's fingerprint.
    pub tokenizer_fingerprint: String,
    /// The engine's kernels (`cpu-packed`, `cpu`, `reference`): the client computes P_LM
    /// with the same head kernel.
    pub kernels: String,
    /// Limits on every request.
    pub limits: Limits,
    /// Seconds a session may wait for its client before it is dropped.
    pub idle_timeout_s: f64,
}

/// The PLM owner's side as served: the engine (model, kernels, batch), its tokenizer and the
/// weights' hash.
pub struct Served<'e, 'm, B: Backend> {
    /// The engine every session runs on.
    pub engine: &'e Engine<'m, B>,
    /// The model's tokenizer (handed to clients).
    pub tokenizer: &'e PemaTokenizer,
    /// sha256 of the weights (as the in-process memory builder records it).
    pub weights_sha256: String,
}

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Accepted bearer tokens (at least one).
    pub tokens: Vec<String>,
    /// Request limits.
    pub limits: Limits,
    /// A session waiting longer than this for its client is dropped.
    pub idle_timeout: Duration,
    /// After a shutdown request, how long open sessions may still run.
    pub drain_timeout: Duration,
    /// Serve HTTPS with this configuration ([`crate::tls::server_config`]); plain HTTP without.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            limits: Limits::default(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            drain_timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// A service that could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// No bearer token configured.
    #[error("no access token configured: give at least one (a token file or PEMA_TOKEN)")]
    NoToken,
    /// The listener or the runtime failed.
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The head could not be read out of the model.
    #[error("head: {0}")]
    Head(String),
}

/// State shared by the request handlers.
struct App {
    cmd: mpsc::Sender<Command>,
    info: Vec<u8>,
    head: Bytes,
    tokenizer: Vec<u8>,
    /// sha256 of each accepted token (compared in constant time).
    tokens: Vec<[u8; 32]>,
}

/// Serves `served` on `listener` until `shutdown` resolves; then refuses new sessions, lets
/// open ones finish (up to the drain time-out) and returns the counters.
pub fn serve<B: Backend>(
    served: &Served<'_, '_, B>,
    config: &ServeConfig,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ServeStats, ServeError> {
    if config.tokens.iter().all(|t| t.is_empty()) {
        return Err(ServeError::NoToken);
    }
    let engine = served.engine;
    let info = ServerInfo {
        protocol: protocol::VERSION,
        model: engine.model().config.name.clone(),
        hidden_size: engine.hidden_size(),
        vocab_size: engine.vocab_size(),
        n_layers: engine.model().config.n_layers,
        weights_sha256: served.weights_sha256.clone(),
        head_fingerprint: engine.model().head.fingerprint.clone(),
        tokenizer_fingerprint: served.tokenizer.fingerprint().to_string(),
        kernels: engine.kernels_name().to_string(),
        limits: config.limits.clone(),
        idle_timeout_s: config.idle_timeout.as_secs_f64(),
    };
    let (tx, rx) = mpsc::channel();
    let app = Arc::new(App {
        cmd: tx,
        info: serde_json::to_vec(&info).map_err(|e| ServeError::Head(e.to_string()))?,
        head: Bytes::from(head_message(engine)?.encode()),
        tokenizer: serde_json::to_vec(&served.tokenizer.spec())
            .map_err(|e| ServeError::Head(e.to_string()))?,
        tokens: config
            .tokens
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| Sha256::digest(t.as_bytes()).into())
            .collect(),
    });
    listener.set_nonblocking(true)?;
    let stopped = Arc::new(Notify::new());
    let body_limit = config.limits.max_body_bytes;
    let tls = config.tls.clone();
    let drain = config.drain_timeout;
    let scheduler = Scheduler::new(engine, config.limits.clone(), config.idle_timeout);
    std::thread::scope(|scope| {
        let http = {
            let (app, stopped) = (app.clone(), stopped.clone());
            scope.spawn(move || http_main(app, listener, tls, body_limit, shutdown, drain, stopped))
        };
        drop(app);
        let stats = scheduler.run(&rx);
        stopped.notify_one();
        match http.join() {
            Ok(r) => r.map(|()| stats),
            Err(_) => Err(ServeError::Io(std::io::Error::other(
                "HTTP thread panicked",
            ))),
        }
    })
}

/// The HTTP side: a tokio runtime serving the routes until the step loop has stopped.
fn http_main(
    app: Arc<App>,
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    body_limit: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
    stopped: Arc<Notify>,
) -> Result<(), ServeError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let cmd = app.cmd.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = cmd.send(Command::Drain(drain));
        });
        let router = Router::new()
            .route("/v1/info", get(info))
            .route("/v1/head", get(head))
            .route("/v1/tokenizer", get(tokenizer))
            .route("/v1/sessions", post(open))
            .route("/v1/sessions/{id}/tokens", post(step))
            .route("/v1/sessions/{id}", delete(close))
            .route("/v1/teacher-forced", post(teacher_forced))
            .layer(middleware::from_fn_with_state(app.clone(), authorize))
            .layer(DefaultBodyLimit::max(body_limit))
            .with_state(app);
        let stop = async move { stopped.notified().await };
        match tls {
            Some(config) => {
                let listener = crate::tls::TlsListener::new(listener, config)?;
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await?;
            }
            None => {
                // Small replies must not wait for the peer's delayed ACK (Nagle).
                let listener = listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await?;
            }
        }
        Ok(())
    })
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM: the usual `shutdown` argument of [`serve`].
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The head as handed out: f32 norm and W_hd, and the packed head the engine multiplies.
fn head_message<B: Backend>(engine: &Engine<'_, B>) -> Result<HeadMessage, ServeError> {
    let head = &engine.model().head;
    let host = |d: burn::tensor::TensorData| {
        d.convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| ServeError::Head(format!("{e:?}")))
    };
    Ok(HeadMessage {
        model: head.model.clone(),
        eps: head.eps,
        vocab: head.vocab_size() as u32,
        fingerprint: head.fingerprint.clone(),
        norm: host(head.norm_weight.to_data())?,
        weight: host(head.weight.to_data())?,
        packed: engine.kernels().packed_head().map(|m| PackedHead {
            ggml_type: m.ty().id(),
            rows: m.rows() as u32,
            cols: m.cols() as u32,
            data: m.data().to_vec(),
        }),
    })
}

/// 401 unless the request carries one of the accepted bearer tokens.
async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| -> [u8; 32] { Sha256::digest(t.trim().as_bytes()).into() });
    let ok = given.is_some_and(|g| {
        app.tokens
            .iter()
            .fold(false, |acc, t| acc | constant_time_eq(t, &g))
    });
    if ok {
        next.run(req).await
    } else {
        text(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
        )
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

fn binary(body: impl IntoResponse) -> Response {
    ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response()
}

fn json(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn failure(e: &ServiceError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    text(status, e.to_string())
}

fn bad_message(e: &protocol::ProtocolError) -> Response {
    text(StatusCode::BAD_REQUEST, e.to_string())
}

/// Sends a command to the step loop and waits for its answer.
async fn ask<T>(
    app: &App,
    make: impl FnOnce(oneshot::Sender<Result<T, ServiceError>>) -> Command,
) -> Result<T, ServiceError> {
    let (tx, rx) = oneshot::channel();
    app.cmd
        .send(make(tx))
        .map_err(|_| ServiceError::Unavailable("the server is shutting down".into()))?;
    rx.await
        .map_err(|_| ServiceError::Unavailable("the server is shutting down".into()))?
}

async fn info(State(app): State<Arc<App>>) -> Response {
    json(app.info.clone())
}

async fn head(State(app): State<Arc<App>>) -> Response {
    binary(app.head.clone())
}

async fn tokenizer(State(app): State<Arc<App>>) -> Response {
    json(app.tokenizer.clone())
}

async fn open(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let req = match OpenSession::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_message(&e),
    };
    match ask(&app, |tx| Command::Open(req, tx)).await {
        Ok(step) => binary(step.encode()),
        Err(e) => failure(&e),
    }
}

async fn step(State(app): State<Arc<App>>, Path(id): Path<u64>, body: Bytes) -> Response {
    let tokens = match Tokens::decode(&body) {
        Ok(t) => t,
        Err(e) => return bad_message(&e),
    };
    match ask(&app, |tx| Command::Tokens(id, tokens.0, tx)).await {
        Ok(step) => binary(step.encode()),
        Err(e) => failure(&e),
    }
}

async fn close(State(app): State<Arc<App>>, Path(id): Path<u64>) -> Response {
    let _ = app.cmd.send(Command::Close(id));
    StatusCode::NO_CONTENT.into_response()
}

async fn teacher_forced(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let disclosed = headers
        .get(DISCLOSE_TARGETS_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    if !disclosed {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "teacher forcing sends the targets to the PLM owner: set `{DISCLOSE_TARGETS_HEADER}: yes` to accept that"
            ),
        );
    }
    let req = match TeacherForced::decode(&body) {
        Ok(r) => r,
        Err(e) => return bad_message(&e),
    };
    match ask(&app, |tx| Command::TeacherForced(req, tx)).await {
        Ok(c) => binary(c.encode()),
        Err(e) => failure(&e),
    }
}

impl<B: Backend> std::fmt::Debug for Served<'_, '_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("model", &self.engine.model().config.name)
            .field("kernels", &self.engine.kernels_name())
            .finish()
    }
}
