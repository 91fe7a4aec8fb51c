//! The PLM owner's step loop: continuous batching across every client's sessions.
//!
//! One thread owns the [`Engine`]. Each session is one client's `generate` call: its prompts,
//! a per-session batch (at most that many of its sequences generate at once, admitted in order
//! exactly as [`pema_backbone::Plm::generate`] admits them in process), and, between steps,
//! the state *waiting for the client's tokens*. Every forward takes the rows of all sessions
//! whose tokens have arrived (up to [`Limits::max_rows_per_forward`]) in one ragged batch, so
//! concurrent clients share the model's matrix products. The server returns f(c) only; the
//! head (and P_LM) is the client's business.

use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use burn::tensor::{Tensor, backend::Backend};
use pema_backbone::{DecodingSeq, Engine, GenerateOptions, Plm, SharedPrefix};
use tokio::sync::oneshot;

use crate::protocol::{Contexts, FULL_LOG_PROBS, LogProbs, OpenSession, StepReply, TeacherForced};
use crate::{Limits, ServiceError};

/// A reply channel.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ServiceError>>;

/// What the HTTP side asks of the step loop.
pub(crate) enum Command {
    /// Open a session (its first step comes back).
    Open(OpenSession, Reply<StepReply>),
    /// The client's tokens for the last step of a session (its next step comes back).
    Tokens(u64, Vec<u32>, Reply<StepReply>),
    /// The client ends a session early.
    Close(u64),
    /// Teacher-forced contexts (the client disclosed its targets).
    TeacherForced(TeacherForced, Reply<Contexts>),
    /// Stop admitting sessions; stop the loop once the open ones end (or the drain time is up).
    Drain(Duration),
}

/// Counters of a serving run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServeStats {
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions that generated to the end.
    pub sessions_finished: u64,
    /// Sessions dropped because their client went silent or away.
    pub sessions_expired: u64,
    /// Sessions ended by their client (or failed).
    pub sessions_closed: u64,
    /// Forwards run.
    pub forwards: u64,
    /// Rows (sequence steps) computed.
    pub rows: u64,
    /// Most rows in one forward.
    pub max_rows_in_forward: u64,
}

/// One row of a session: a sequence generating.
struct Row<B: Backend> {
    seq: usize,
    step: usize,
    dec: DecodingSeq<B>,
}

/// Between steps a session waits for its client; once the tokens came it is ready.
enum State {
    Waiting(Instant),
    Ready(Reply<StepReply>),
}

struct Session<B: Backend> {
    prompts: Vec<Vec<u32>>,
    /// Maximum lengths and stop tokens, as the in-process `generate` takes them.
    options: GenerateOptions,
    batch: usize,
    prefix: Option<Rc<SharedPrefix<B>>>,
    queue: VecDeque<usize>,
    generated: Vec<usize>,
    rows: Vec<Row<B>>,
    state: State,
    log_probs: u32,
}

impl<B: Backend> Session<B> {
    /// Admits queued prompts up to the session's batch (as the in-process engine does).
    fn admit(&mut self, engine: &Engine<'_, B>) {
        while self.rows.len() < self.batch {
            let Some(i) = self.queue.pop_front() else {
                break;
            };
            let dec = engine.begin(&self.prompts[i], self.prefix.as_deref());
            self.rows.push(Row {
                seq: i,
                step: 0,
                dec,
            });
        }
    }

    /// Applies the client's tokens to the rows of the last step; drops finished rows.
    fn apply(&mut self, tokens: &[u32], vocab: usize) -> Result<(), ServiceError> {
        if tokens.len() != self.rows.len() {
            return Err(ServiceError::BadRequest(format!(
                "{} tokens for a step of {} rows",
                tokens.len(),
                self.rows.len()
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ServiceError::BadRequest(format!(
                "token {t} outside the vocabulary ({vocab})"
            )));
        }
        let mut keep = Vec::with_capacity(self.rows.len());
        for (r, &id) in self.rows.iter_mut().zip(tokens) {
            self.generated[r.seq] += 1;
            let done = self.options.stop_tokens.contains(&id)
                || self.generated[r.seq] >= self.options.max_for(r.seq);
            if !done {
                r.dec.push(id);
                r.step += 1;
            }
            keep.push(!done);
        }
        let mut k = keep.into_iter();
        self.rows.retain(|_| k.next().unwrap_or(false));
        Ok(())
    }
}

/// The step loop's state.
pub(crate) struct Scheduler<'e, 'm, B: Backend> {
    engine: &'e Engine<'m, B>,
    limits: Limits,
    idle_timeout: Duration,
    sessions: BTreeMap<u64, Session<B>>,
    prefixes: Vec<Rc<SharedPrefix<B>>>,
    next_id: u64,
    /// Where the next forward starts looking for ready sessions (round robin).
    cursor: u64,
    drain_until: Option<Instant>,
    stats: ServeStats,
}

impl<'e, 'm, B: Backend> Scheduler<'e, 'm, B> {
    pub(crate) fn new(engine: &'e Engine<'m, B>, limits: Limits, idle_timeout: Duration) -> Self {
        Self {
            engine,
            limits,
            idle_timeout,
            sessions: BTreeMap::new(),
            prefixes: Vec::new(),
            next_id: 1,
            cursor: 0,
            drain_until: None,
            stats: ServeStats::default(),
        }
    }

    /// Runs until drained (or every sender is gone); returns the counters.
    pub(crate) fn run(mut self, rx: &Receiver<Command>) -> ServeStats {
        loop {
            let ready = self.any_ready();
            // Block only when no forward is due; wake up to expire idle sessions.
            let first = if ready {
                rx.try_recv().ok()
            } else {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            };
            if let Some(c) = first {
                self.handle(c);
                while let Ok(c) = rx.try_recv() {
                    self.handle(c);
                }
            }
            self.expire();
            if let Some(until) = self.drain_until {
                if self.sessions.is_empty() {
                    break;
                }
                if Instant::now() >= until {
                    for (_, s) in std::mem::take(&mut self.sessions) {
                        if let State::Ready(reply) = s.state {
                            let _ = reply.send(Err(ServiceError::Unavailable(
                                "the server is shutting down".into(),
                            )));
                        }
                        self.stats.sessions_closed += 1;
                    }
                    break;
                }
            }
            if self.any_ready() {
                self.forward();
            }
        }
        self.stats
    }

    fn any_ready(&self) -> bool {
        self.sessions
            .values()
            .any(|s| matches!(s.state, State::Ready(_)))
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Open(req, reply) => self.open(req, reply),
            Command::Tokens(id, tokens, reply) => self.tokens(id, &tokens, reply),
            Command::Close(id) => {
                if self.sessions.remove(&id).is_some() {
                    self.stats.sessions_closed += 1;
                }
            }
            Command::TeacherForced(req, reply) => {
                let _ = reply.send(self.teacher_forced(&req));
            }
            Command::Drain(grace) => {
                self.drain_until.get_or_insert(Instant::now() + grace);
            }
        }
    }

    fn open(&mut self, req: OpenSession, reply: Reply<StepReply>) {
        let checked = if self.drain_until.is_some() {
            Err(ServiceError::Unavailable(
                "the server is shutting down".into(),
            ))
        } else if self.sessions.len() >= self.limits.max_sessions {
            Err(ServiceError::Unavailable(format!(
                "{} sessions open, the limit",
                self.sessions.len()
            )))
        } else {
            self.validate(&req)
                .and_then(|()| self.prefix(&req.shared_prefix))
        };
        let prefix = match checked {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let n = req.prompts.len();
        let mut s = Session {
            batch: (req.batch as usize).clamp(1, self.limits.max_batch_per_session),
            options: GenerateOptions {
                max_new_tokens: req.max_new_tokens.iter().map(|&m| m as usize).collect(),
                stop_tokens: req.stop_tokens,
            },
            prefix,
            queue: VecDeque::new(),
            generated: vec![0; n],
            rows: Vec::new(),
            state: State::Ready(reply),
            log_probs: req.log_probs,
            prompts: req.prompts,
        };
        s.queue = (0..n).filter(|&i| s.options.max_for(i) > 0).collect();
        s.admit(self.engine);
        let id = self.next_id;
        self.next_id += 1;
        self.stats.sessions_opened += 1;
        self.sessions.insert(id, s);
        self.finish_if_done(id);
    }

    fn validate(&self, req: &OpenSession) -> Result<(), ServiceError> {
        let l = &self.limits;
        let vocab = self.engine.vocab_size();
        let bad = |m: String| Err(ServiceError::BadRequest(m));
        if req.prompts.is_empty() || req.prompts.iter().any(Vec::is_empty) {
            return bad("a session needs at least one prompt and no empty prompt".into());
        }
        if req.prompts.len() > l.max_prompts {
            return bad(format!(
                "{} prompts, the limit is {}",
                req.prompts.len(),
                l.max_prompts
            ));
        }
        if let Some(p) = req.prompts.iter().find(|p| p.len() > l.max_prompt_tokens) {
            return bad(format!(
                "a prompt of {} tokens, the limit is {}",
                p.len(),
                l.max_prompt_tokens
            ));
        }
        if req.max_new_tokens.len() != 1 && req.max_new_tokens.len() != req.prompts.len() {
            return bad(format!(
                "{} maximum lengths for {} prompts (give one, or one per prompt)",
                req.max_new_tokens.len(),
                req.prompts.len()
            ));
        }
        if let Some(m) = req
            .max_new_tokens
            .iter()
            .find(|&&m| m as usize > l.max_new_tokens)
        {
            return bad(format!(
                "{m} new tokens asked, the limit is {}",
                l.max_new_tokens
            ));
        }
        let all = req
            .prompts
            .iter()
            .flatten()
            .chain(&req.shared_prefix)
            .chain(&req.stop_tokens);
        if let Some(t) = all.into_iter().find(|&&t| t as usize >= vocab) {
            return bad(format!("token {t} outside the vocabulary ({vocab})"));
        }
        if req.shared_prefix.len() > l.max_prompt_tokens {
            return bad("the shared prefix is longer than a prompt may be".into());
        }
        let rows = (req.batch as usize).clamp(1, l.max_batch_per_session);
        let per_row = match req.log_probs {
            0 => 0,
            FULL_LOG_PROBS => 4 * vocab,
            k if k as usize > vocab.min(MAX_TOP_K) => {
                return bad(format!(
                    "top-{k} log-probabilities asked, at most {}",
                    vocab.min(MAX_TOP_K)
                ));
            }
            k => 8 * k as usize,
        };
        if rows * per_row > l.max_body_bytes {
            return bad(format!(
                "{rows} rows of log-probabilities ({per_row} bytes each) exceed a reply's {} bytes: lower the batch or ask for top-k",
                l.max_body_bytes
            ));
        }
        Ok(())
    }

    /// The computed prefix for `tokens` (cached, least recently used dropped first).
    fn prefix(&mut self, tokens: &[u32]) -> Result<Option<Rc<SharedPrefix<B>>>, ServiceError> {
        if tokens.is_empty() {
            return Ok(None);
        }
        if let Some(i) = self.prefixes.iter().position(|p| p.tokens() == tokens) {
            let p = self.prefixes.remove(i);
            self.prefixes.push(p.clone());
            return Ok(Some(p));
        }
        let p = Rc::new(
            self.engine
                .compute_prefix(tokens)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
        );
        if self.prefixes.len() >= self.limits.max_prefixes.max(1) {
            self.prefixes.remove(0);
        }
        self.prefixes.push(p.clone());
        Ok(Some(p))
    }

    fn tokens(&mut self, id: u64, tokens: &[u32], reply: Reply<StepReply>) {
        let vocab = self.engine.vocab_size();
        let Some(s) = self.sessions.get_mut(&id) else {
            let _ = reply.send(Err(ServiceError::NotFound(format!(
                "no session {id} (finished, expired or never opened)"
            ))));
            return;
        };
        if matches!(s.state, State::Ready(_)) {
            let _ = reply.send(Err(ServiceError::Conflict(format!(
                "session {id} already has a step in progress"
            ))));
            return;
        }
        if let Err(e) = s.apply(tokens, vocab) {
            let _ = reply.send(Err(e));
            return;
        }
        s.admit(self.engine);
        s.state = State::Ready(reply);
        self.finish_if_done(id);
    }

    /// A session without rows is done: its client gets the empty step and it is removed.
    fn finish_if_done(&mut self, id: u64) {
        if !self.sessions.get(&id).is_some_and(|s| s.rows.is_empty()) {
            return;
        }
        if let Some(s) = self.sessions.remove(&id) {
            if let State::Ready(reply) = s.state {
                let _ = reply.send(Ok(StepReply {
                    session: id,
                    seqs: Vec::new(),
                    steps: Vec::new(),
                    hidden: self.engine.hidden_size() as u32,
                    context: Vec::new(),
                    log_probs: LogProbs::None,
                }));
            }
            self.stats.sessions_finished += 1;
        }
    }

    /// Drops sessions whose client has been silent longer than the idle time-out.
    fn expire(&mut self) {
        let now = Instant::now();
        let before = self.sessions.len();
        self.sessions.retain(|_, s| match s.state {
            State::Waiting(since) => now.duration_since(since) < self.idle_timeout,
            State::Ready(_) => true,
        });
        self.stats.sessions_expired += (before - self.sessions.len()) as u64;
    }

    /// One ragged forward over the ready sessions' rows; each gets its step.
    fn forward(&mut self) {
        let cap = self.limits.max_rows_per_forward.max(1);
        let mut ids = Vec::new();
        let mut rows = 0;
        // Round robin: start after the last session served, so that when more rows are ready
        // than one forward takes, no session waits behind the same others every time.
        let order = self
            .sessions
            .range(self.cursor..)
            .chain(self.sessions.range(..self.cursor));
        for (&id, s) in order {
            if matches!(s.state, State::Ready(_)) {
                if !ids.is_empty() && rows + s.rows.len() > cap {
                    break;
                }
                rows += s.rows.len();
                ids.push(id);
            }
        }
        self.cursor = ids.last().map_or(0, |&id| id + 1);
        let mut chosen: BTreeMap<u64, &mut Session<B>> = self
            .sessions
            .iter_mut()
            .filter(|(id, _)| ids.contains(id))
            .map(|(&id, s)| (id, s))
            .collect();
        let mut decs: Vec<&mut DecodingSeq<B>> = Vec::with_capacity(rows);
        for id in &ids {
            if let Some(s) = chosen.remove(id) {
                decs.extend(s.rows.iter_mut().map(|r| &mut r.dec));
            }
        }
        let hidden = self.engine.advance(&mut decs);
        let out = match &hidden {
            Ok(h) => host_rows(h.clone()),
            Err(e) => Err(pema_backbone::BackboneError::Invalid(e.to_string())),
        };
        self.stats.forwards += 1;
        self.stats.rows += rows as u64;
        self.stats.max_rows_in_forward = self.stats.max_rows_in_forward.max(rows as u64);
        let d = self.engine.hidden_size();
        let mut off = 0;
        for id in ids {
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            let n = s.rows.len();
            let State::Ready(reply) =
                std::mem::replace(&mut s.state, State::Waiting(Instant::now()))
            else {
                continue;
            };
            let log_probs = match (&hidden, s.log_probs) {
                (Ok(h), mode) if mode > 0 => {
                    log_probs(self.engine, h.clone().narrow(0, off, n), mode)
                }
                _ => Ok(LogProbs::None),
            };
            let msg = match (&out, log_probs) {
                (Ok(host), Ok(log_probs)) => Ok(StepReply {
                    session: id,
                    seqs: s.rows.iter().map(|r| r.seq as u32).collect(),
                    steps: s.rows.iter().map(|r| r.step as u32).collect(),
                    hidden: d as u32,
                    context: host[off * d..(off + n) * d].to_vec(),
                    log_probs,
                }),
                (Err(e), _) => Err(ServiceError::Internal(e.to_string())),
                (_, Err(e)) => Err(ServiceError::Internal(e.to_string())),
            };
            off += n;
            let failed = msg.is_err();
            if reply.send(msg).is_err() || failed {
                // The client went away mid-request (or the forward failed): free the session.
                self.sessions.remove(&id);
                self.stats.sessions_closed += 1;
            }
        }
    }

    fn teacher_forced(&self, req: &TeacherForced) -> Result<Contexts, ServiceError> {
        let l = &self.limits;
        if req.prompts.len() > l.max_prompts {
            return Err(ServiceError::BadRequest(format!(
                "{} prompts, the limit is {}",
                req.prompts.len(),
                l.max_prompts
            )));
        }
        let too_long = req
            .prompts
            .iter()
            .zip(&req.continuations)
            .any(|(p, c)| p.len() + c.len() > l.max_prompt_tokens + l.max_new_tokens);
        let vocab = self.engine.vocab_size();
        let bad_token = req
            .prompts
            .iter()
            .chain(&req.continuations)
            .flatten()
            .any(|&t| t as usize >= vocab);
        if too_long || bad_token {
            return Err(ServiceError::BadRequest(
                "a sequence is over the length limits or has a token outside the vocabulary".into(),
            ));
        }
        let hs = self
            .engine
            .teacher_forced_contexts(&req.prompts, &req.continuations)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let mut lens = Vec::with_capacity(hs.len());
        let mut data = Vec::new();
        for h in hs {
            lens.push(h.dims()[0] as u32);
            data.extend(host_rows(h).map_err(|e| ServiceError::Internal(e.to_string()))?);
        }
        Ok(Contexts {
            hidden: self.engine.hidden_size() as u32,
            lens,
            data,
        })
    }
}

/// Most top-k log-probabilities a session may ask for per row.
const MAX_TOP_K: usize = 4096;

/// P_LM of `rows: [n, d]` through the engine's head: the top `mode` log-probabilities of each
/// row (most probable first), or all of them for [`FULL_LOG_PROBS`].
fn log_probs<B: Backend>(
    engine: &Engine<'_, B>,
    rows: Tensor<B, 2>,
    mode: u32,
) -> pema_backbone::error::Result<LogProbs> {
    let lp = burn::tensor::activation::log_softmax(engine.logits(rows), 1);
    let [n, vocab] = lp.dims();
    let values = host_rows(lp)?;
    if mode == FULL_LOG_PROBS {
        return Ok(LogProbs::Full {
            vocab: vocab as u32,
            values,
        });
    }
    let k = (mode as usize).min(vocab);
    let (mut ids, mut top) = (Vec::with_capacity(n * k), Vec::with_capacity(n * k));
    for row in values.chunks_exact(vocab.max(1)) {
        let mut idx: Vec<u32> = (0..vocab as u32).collect();
        let by_value = |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]);
        if k < vocab {
            idx.select_nth_unstable_by(k, by_value);
            idx.truncate(k);
        }
        idx.sort_by(|a, b| by_value(a, b).then(a.cmp(b)));
        top.extend(idx.iter().map(|&i| row[i as usize]));
        ids.extend(idx);
    }
    Ok(LogProbs::TopK {
        k: k as u32,
        ids,
        values: top,
    })
}

/// A `[rows, d]` tensor as host f32 values.
fn host_rows<B: Backend>(t: Tensor<B, 2>) -> pema_backbone::error::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| pema_backbone::BackboneError::Invalid(format!("{e:?}")))
}
