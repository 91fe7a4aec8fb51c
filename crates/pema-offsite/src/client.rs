//! The data owner's side: a [`Plm`] whose model runs at the PLM owner's `pema serve`.
//!
//! [`RemotePlm::connect`] fetches the server's description and the frozen head once. In
//! [`Plm::generate`] every step's f(c) comes from the server; the client computes the PLM's
//! logits W_hd · norm(f(c)) with the same head kernel as the server's engine (the packed head
//! when the server multiplies one), so a [`pema_backbone::StepPolicy`] sees exactly what it
//! sees in process, and only the chosen token ids go back. Teacher forcing is refused unless
//! [`RemotePlm::disclose_targets`] was called: it is the one request that carries targets.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use pema_backbone::error::Result as BackboneResult;
use pema_backbone::gguf::GgmlType;
use pema_backbone::packed::{PackedMatrix, PackedModel};
use pema_backbone::{
    BackboneError, ContextRepr, CpuKernels, GenerateOptions, Kernels, LmHead, PemaTokenizer, Plm,
    Reference, StepOutput, StepPolicy, TokenizerSpec,
};

use crate::protocol::{
    self, Contexts, HeadMessage, LogProbs, OpenSession, ProtocolError, StepReply, TeacherForced,
    Tokens,
};
use crate::server::{DISCLOSE_TARGETS_HEADER, ServerInfo};

/// A client-side failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached or the connection broke.
    #[error("cannot reach the PLM service at {url}: {message}")]
    Transport {
        /// The URL asked.
        url: String,
        /// What failed.
        message: String,
    },
    /// The server answered with an error status.
    #[error("the PLM service answered {status}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server's answer is not a valid message.
    #[error("the PLM service sent a bad message: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server's answer is valid but not what was asked (wrong sizes, fingerprints).
    #[error("the PLM service's answer does not fit: {0}")]
    Mismatch(String),
}

impl From<ClientError> for BackboneError {
    fn from(e: ClientError) -> Self {
        BackboneError::Remote(e.to_string())
    }
}

/// The PLM at a `pema serve` endpoint, as the data owner uses it.
pub struct RemotePlm<B: Backend> {
    http: Http,
    info: ServerInfo,
    head: LmHead<B>,
    kernels: Box<dyn Kernels<B>>,
    device: B::Device,
    batch: u32,
    shared_prefix: Vec<u32>,
    disclose_targets: bool,
    log_probs: u32,
}

impl<B: Backend> std::fmt::Debug for RemotePlm<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemotePlm")
            .field("url", &self.http.base)
            .field("model", &self.info.model)
            .field("batch", &self.batch)
            .finish()
    }
}

/// The HTTP side of a client: agent, base URL and bearer header.
struct Http {
    agent: ureq::Agent,
    base: String,
    auth: String,
}

impl Http {
    /// One request; returns the body of a 2xx answer.
    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, ClientError> {
        self.call_with(method, path, body, None)
    }

    fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        header: Option<(&str, &str)>,
    ) -> Result<Vec<u8>, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .agent
            .request(method, &url)
            .set("Authorization", &self.auth);
        if let Some((k, v)) = header {
            req = req.set(k, v);
        }
        let sent = match body {
            Some(b) => req
                .set("Content-Type", "application/octet-stream")
                .send_bytes(b),
            None => req.call(),
        };
        match sent {
            Ok(resp) => {
                let mut buf = Vec::new();
                resp.into_reader()
                    .read_to_end(&mut buf)
                    .map_err(|e| ClientError::Transport {
                        url,
                        message: e.to_string(),
                    })?;
                Ok(buf)
            }
            Err(ureq::Error::Status(status, resp)) => Err(ClientError::Server {
                status,
                message: resp.into_string().unwrap_or_default(),
            }),
            Err(ureq::Error::Transport(t)) => Err(ClientError::Transport {
                url,
                message: t.to_string(),
            }),
        }
    }
}

impl<B: Backend> RemotePlm<B> {
    /// Connects to `url` (e.g. `http://127.0.0.1:7878`) with bearer `token`: reads the
    /// server's description and the head (checking its fingerprint), on `device`.
    pub fn connect(url: &str, token: &str, device: &B::Device) -> Result<Self, ClientError> {
        Self::connect_with(url, token, None, device)
    }

    /// [`RemotePlm::connect`] with a TLS configuration for `https://` URLs (e.g. trusting a
    /// private CA: [`crate::tls::client_config`]); `None` trusts the web's roots.
    pub fn connect_with(
        url: &str,
        token: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        device: &B::Device,
    ) -> Result<Self, ClientError> {
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(600));
        if let Some(config) = tls {
            builder = builder.tls_config(config);
        }
        let http = Http {
            agent: builder.build(),
            base: url.trim_end_matches('/').to_string(),
            auth: format!("Bearer {}", token.trim()),
        };
        let info: ServerInfo = serde_json::from_slice(&http.call("GET", "/v1/info", None)?)
            .map_err(|e| ClientError::Mismatch(format!("server info: {e}")))?;
        if info.protocol != protocol::VERSION {
            return Err(ClientError::Mismatch(format!(
                "the server speaks protocol v{}, this client v{}",
                info.protocol,
                protocol::VERSION
            )));
        }
        let msg = HeadMessage::decode(&http.call("GET", "/v1/head", None)?)?;
        let head = LmHead::from_host(
            msg.norm,
            msg.eps,
            msg.weight,
            msg.vocab as usize,
            &msg.model,
            device,
        )
        .map_err(|e| ClientError::Mismatch(format!("head: {e}")))?;
        if head.fingerprint != msg.fingerprint || head.fingerprint != info.head_fingerprint {
            return Err(ClientError::Mismatch(format!(
                "the head received hashes to {}, the server announced {}",
                head.fingerprint, info.head_fingerprint
            )));
        }
        let kernels: Box<dyn Kernels<B>> = match msg.packed {
            Some(p) => {
                let ty = GgmlType::from_id(p.ggml_type).ok_or_else(|| {
                    ClientError::Mismatch(format!("unknown GGUF type {}", p.ggml_type))
                })?;
                let m = PackedMatrix::new(ty, p.rows as usize, p.cols as usize, p.data)
                    .map_err(|e| ClientError::Mismatch(format!("packed head: {e}")))?;
                Box::new(CpuKernels::with_packed(Arc::new(PackedModel::head_only(m))))
            }
            None if info.kernels.starts_with("cpu") => Box::new(CpuKernels::new()),
            None => Box::new(Reference),
        };
        Ok(Self {
            http,
            info,
            head,
            kernels,
            device: device.clone(),
            batch: 8,
            shared_prefix: Vec::new(),
            disclose_targets: false,
            log_probs: 0,
        })
    }

    /// At most `n` sequences of one `generate` call run at once (the server may cap it).
    pub fn with_batch(mut self, n: usize) -> Self {
        self.batch = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
        self
    }

    /// Tokens every prompt starts with (the few-shot template's beginning): the server
    /// computes them once. They are part of every prompt anyway.
    pub fn with_shared_prefix(mut self, tokens: Vec<u32>) -> Self {
        self.shared_prefix = tokens;
        self
    }

    /// Takes P_LM from the server instead of computing it from the head: `k` > 0 asks for the
    /// top-k log-probabilities of each row (8·k bytes per row and step; every other token
    /// gets no PLM mass, so the mixture is an approximation), [`protocol::FULL_LOG_PROBS`]
    /// for all of them (4·V bytes: 1 MiB per row and step for Gemma 3; the same P_LM up to
    /// rounding); 0 (the default) computes it here, exactly, for a head product per row.
    pub fn with_server_log_probs(mut self, k: u32) -> Self {
        self.log_probs = k;
        self
    }

    /// Accepts that [`Plm::teacher_forced_contexts`] sends the gold continuations to the PLM
    /// owner (without this it is refused).
    pub fn disclose_targets(mut self) -> Self {
        self.disclose_targets = true;
        self
    }

    /// The server's description.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// The frozen head received (final norm + W_hd).
    pub fn head(&self) -> &LmHead<B> {
        &self.head
    }

    /// The model's tokenizer, fetched from the server (fingerprint checked).
    pub fn tokenizer(&self) -> Result<PemaTokenizer, ClientError> {
        let spec: TokenizerSpec =
            serde_json::from_slice(&self.http.call("GET", "/v1/tokenizer", None)?)
                .map_err(|e| ClientError::Mismatch(format!("tokenizer: {e}")))?;
        let tok =
            PemaTokenizer::from_spec(&spec).map_err(|e| ClientError::Mismatch(e.to_string()))?;
        if tok.fingerprint() != self.info.tokenizer_fingerprint {
            return Err(ClientError::Mismatch(format!(
                "the tokenizer received hashes to {}, the server announced {}",
                tok.fingerprint(),
                self.info.tokenizer_fingerprint
            )));
        }
        Ok(tok)
    }

    /// Checks a step against the session's state and makes its [`StepOutput`].
    fn step_output(&self, step: StepReply, n_prompts: usize) -> Result<StepOutput<B>, ClientError> {
        let (rows, d) = (step.seqs.len(), self.info.hidden_size);
        if step.hidden as usize != d
            || step.steps.len() != rows
            || step.context.len() != rows * d
            || step.seqs.iter().any(|&s| s as usize >= n_prompts)
        {
            return Err(ClientError::Mismatch(format!(
                "a step of {rows} rows with hidden size {} for {n_prompts} prompts of d = {d}",
                step.hidden
            )));
        }
        let context =
            Tensor::<B, 2>::from_data(TensorData::new(step.context, [rows, d]), &self.device);
        let vocab = self.info.vocab_size;
        let logits = match step.log_probs {
            LogProbs::None if self.log_probs == 0 => self.kernels.head(&self.head, context.clone()),
            LogProbs::Full { vocab: v, values } if v as usize == vocab => {
                Tensor::from_data(TensorData::new(values, [rows, vocab]), &self.device)
            }
            LogProbs::TopK { k, ids, values }
                if ids.len() == rows * k as usize && ids.iter().all(|&i| (i as usize) < vocab) =>
            {
                let mut dense = vec![f32::NEG_INFINITY; rows * vocab];
                let k = (k as usize).max(1);
                for (r, (ids, values)) in ids.chunks(k).zip(values.chunks(k)).enumerate() {
                    for (&i, &v) in ids.iter().zip(values) {
                        dense[r * vocab + i as usize] = v;
                    }
                }
                Tensor::from_data(TensorData::new(dense, [rows, vocab]), &self.device)
            }
            _ => {
                return Err(ClientError::Mismatch(
                    "the step's log-probabilities are not what the session asked for".into(),
                ));
            }
        };
        Ok(StepOutput {
            seqs: step.seqs.iter().map(|&s| s as usize).collect(),
            steps: step.steps.iter().map(|&s| s as usize).collect(),
            context: ContextRepr(context),
            logits,
        })
    }

    fn run_session(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        policy: &mut dyn StepPolicy<B>,
        out: &mut [Vec<u32>],
        session: &mut Option<u64>,
    ) -> Result<(), BackboneError> {
        let open = OpenSession {
            batch: self.batch,
            shared_prefix: self.shared_prefix.clone(),
            max_new_tokens: (0..prompts.len())
                .map(|i| u32::try_from(options.max_for(i)).unwrap_or(u32::MAX))
                .collect(),
            stop_tokens: options.stop_tokens.clone(),
            prompts: prompts.to_vec(),
            log_probs: self.log_probs,
        };
        let mut reply = StepReply::decode(&self.http.call(
            "POST",
            "/v1/sessions",
            Some(&open.encode()),
        )?)
        .map_err(ClientError::from)?;
        *session = Some(reply.session);
        let vocab = self.info.vocab_size as u32;
        while !reply.is_done() {
            let id = reply.session;
            let so = self.step_output(reply, prompts.len())?;
            let ids = policy.next_tokens(&so);
            if ids.len() != so.rows() {
                return Err(BackboneError::Invalid(format!(
                    "policy returned {} tokens for a batch of {}",
                    ids.len(),
                    so.rows()
                )));
            }
            if let Some(&t) = ids.iter().find(|&&t| t >= vocab) {
                return Err(BackboneError::Invalid(format!(
                    "policy chose token {t} outside the vocabulary ({vocab})"
                )));
            }
            for (&seq, &t) in so.seqs.iter().zip(&ids) {
                out[seq].push(t);
            }
            let path = format!("/v1/sessions/{id}/tokens");
            reply =
                StepReply::decode(&self.http.call("POST", &path, Some(&Tokens(ids).encode()))?)
                    .map_err(ClientError::from)?;
        }
        *session = None;
        Ok(())
    }
}

impl<B: Backend> Plm<B> for RemotePlm<B> {
    fn hidden_size(&self) -> usize {
        self.info.hidden_size
    }

    fn vocab_size(&self) -> usize {
        self.info.vocab_size
    }

    fn device(&self) -> B::Device {
        self.device.clone()
    }

    fn generate(
        &self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
        policy: &mut dyn StepPolicy<B>,
    ) -> BackboneResult<Vec<Vec<u32>>> {
        if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
            return Err(BackboneError::Invalid(
                "generate needs at least one prompt and no empty prompt".into(),
            ));
        }
        let mut out = vec![Vec::new(); prompts.len()];
        let mut session = None;
        let r = self.run_session(prompts, options, policy, &mut out, &mut session);
        if let (Err(_), Some(id)) = (&r, session) {
            // Free the server's session at once instead of waiting for its idle time-out.
            let _ = self
                .http
                .call("DELETE", &format!("/v1/sessions/{id}"), None);
        }
        r.map(|()| out)
    }

    fn teacher_forced_contexts(
        &self,
        prompts: &[Vec<u32>],
        continuations: &[Vec<u32>],
    ) -> BackboneResult<Vec<Tensor<B, 2>>> {
        if !self.disclose_targets {
            return Err(BackboneError::Remote(
                "teacher forcing would send the training targets to the PLM owner; build the memory free-running (the paper's mode) or accept the disclosure explicitly".into(),
            ));
        }
        let req = TeacherForced {
            prompts: prompts.to_vec(),
            continuations: continuations.to_vec(),
        };
        let body = self.http.call_with(
            "POST",
            "/v1/teacher-forced",
            Some(&req.encode()),
            Some((DISCLOSE_TARGETS_HEADER, "yes")),
        )?;
        let c = Contexts::decode(&body).map_err(ClientError::from)?;
        let d = self.info.hidden_size;
        if c.hidden as usize != d
            || c.lens.len() != continuations.len()
            || c.lens
                .iter()
                .zip(continuations)
                .any(|(&l, y)| l as usize != y.len())
        {
            return Err(
                ClientError::Mismatch("teacher-forced contexts of the wrong shape".into()).into(),
            );
        }
        let mut off = 0;
        Ok(c.lens
            .iter()
            .map(|&l| {
                let n = l as usize * d;
                let t = Tensor::from_data(
                    TensorData::new(c.data[off..off + n].to_vec(), [l as usize, d]),
                    &self.device,
                );
                off += n;
                t
            })
            .collect())
    }
}
