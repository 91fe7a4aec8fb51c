//! The wire format: little-endian binary bodies over HTTP/1.1 (see `PROTOCOL.md`).
//!
//! Every binary body starts with the magic `PEMA`, a version byte ([`VERSION`]) and a kind
//! byte; counts are `u32`, ids `u32`, floats `f32` (the head's ε `f64`), session ids `u64`.
//! Decoding checks every length against the bytes present before allocating, so a truncated
//! or hostile body is a [`ProtocolError`], never a panic or an oversized allocation.

use thiserror::Error;

/// Protocol version carried in every body.
pub const VERSION: u8 = 1;
const MAGIC: &[u8; 4] = b"PEMA";

/// A body that cannot be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// Fewer bytes than the message announces.
    #[error("message truncated: {0}")]
    Truncated(&'static str),
    /// Not a pema message, or another version.
    #[error("not a pema v{VERSION} message ({0})")]
    Header(String),
    /// The message is of another kind than expected.
    #[error("expected a `{expected}` message, got kind {got}")]
    Kind {
        /// What the endpoint takes.
        expected: &'static str,
        /// The kind byte received.
        got: u8,
    },
    /// Well-formed bytes with inconsistent contents.
    #[error("invalid message: {0}")]
    Invalid(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ProtocolError>;

/// Message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`OpenSession`].
    Open = 1,
    /// [`StepReply`].
    Step = 2,
    /// [`Tokens`].
    Tokens = 3,
    /// [`TeacherForced`].
    TeacherForced = 4,
    /// [`Contexts`].
    Contexts = 5,
    /// [`HeadMessage`].
    Head = 6,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::Step => "step",
            Kind::Tokens => "tokens",
            Kind::TeacherForced => "teacher-forced",
            Kind::Contexts => "contexts",
            Kind::Head => "head",
        }
    }
}

/// Opens a generation session: the prompts (token ids) and how long each may run.
/// No target text or target token is ever part of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenSession {
    /// Most sequences of this session generating at once (continuous batching).
    pub batch: u32,
    /// Tokens the server may compute once and share (the few-shot template's beginning);
    /// empty for none. Results are those of recomputing it.
    pub shared_prefix: Vec<u32>,
    /// Maximum new tokens per prompt (one value is broadcast).
    pub max_new_tokens: Vec<u32>,
    /// Tokens that end a sequence.
    pub stop_tokens: Vec<u32>,
    /// The prompts.
    pub prompts: Vec<Vec<u32>>,
    /// P_LM from the server as well: 0 = no (the client computes it from the head, the
    /// default), k = the top-k log-probabilities of each row, [`FULL_LOG_PROBS`] = all of them.
    pub log_probs: u32,
}

/// [`OpenSession::log_probs`] asking for the full distribution (4·V bytes per row and step).
pub const FULL_LOG_PROBS: u32 = u32::MAX;

/// The PLM's log-probabilities of a step's rows, when the session asked for them.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum LogProbs {
    /// Not asked for.
    #[default]
    None,
    /// The k most probable tokens of each row, most probable first.
    TopK {
        /// k.
        k: u32,
        /// Token ids, `[rows, k]`.
        ids: Vec<u32>,
        /// Their log-probabilities, `[rows, k]`.
        values: Vec<f32>,
    },
    /// Every token's log-probability, `[rows, vocab]`.
    Full {
        /// Vocabulary size.
        vocab: u32,
        /// `[rows, vocab]`.
        values: Vec<f32>,
    },
}

/// The server's answer to an open or a tokens message: the next step's rows, or the end.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReply {
    /// The session.
    pub session: u64,
    /// Index of each row's prompt (empty when the session is done).
    pub seqs: Vec<u32>,
    /// Each row's step within its continuation.
    pub steps: Vec<u32>,
    /// Hidden size d.
    pub hidden: u32,
    /// f(c) of each row, `[rows, d]` row-major.
    pub context: Vec<f32>,
    /// P_LM of each row, if the session asked for it.
    pub log_probs: LogProbs,
}

impl StepReply {
    /// Whether every sequence has finished (no rows).
    pub fn is_done(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// The client's choice of next token for every row of the last step, in row order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens(pub Vec<u32>);

/// Teacher-forced contexts: the targets go to the PLM owner (the client must say so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeacherForced {
    /// Prompts.
    pub prompts: Vec<Vec<u32>>,
    /// Gold continuations.
    pub continuations: Vec<Vec<u32>>,
}

/// Per-sequence context representations, `[len_i, d]` each.
#[derive(Debug, Clone, PartialEq)]
pub struct Contexts {
    /// Hidden size d.
    pub hidden: u32,
    /// Rows of each sequence.
    pub lens: Vec<u32>,
    /// All rows, sequence after sequence.
    pub data: Vec<f32>,
}

/// A packed (GGUF-block) LM head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedHead {
    /// GGUF type id.
    pub ggml_type: u32,
    /// Rows (vocabulary).
    pub rows: u32,
    /// Columns (d).
    pub cols: u32,
    /// The blocks.
    pub data: Vec<u8>,
}

/// The frozen head as handed to a data owner: final norm, W_hd and, when the server's engine
/// multiplies a packed head, that head too (so P_LM on the client is the server's, bit for bit).
#[derive(Debug, Clone, PartialEq)]
pub struct HeadMessage {
    /// Model name.
    pub model: String,
    /// RMSNorm ε.
    pub eps: f64,
    /// Vocabulary size.
    pub vocab: u32,
    /// The head's fingerprint (the client recomputes and compares it).
    pub fingerprint: String,
    /// Final norm weight `[d]`.
    pub norm: Vec<f32>,
    /// W_hd `[vocab, d]`.
    pub weight: Vec<f32>,
    /// The packed head the server's engine uses, if any.
    pub packed: Option<PackedHead>,
}

/// Appends the encoding of a message to a buffer.
#[derive(Debug)]
struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: Kind) -> Self {
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(MAGIC);
        v.push(VERSION);
        v.push(kind as u8);
        Self(v)
    }
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn ids(&mut self, xs: &[u32]) {
        self.len(xs.len());
        for &x in xs {
            self.u32(x);
        }
    }
    fn id_lists(&mut self, xs: &[Vec<u32>]) {
        self.len(xs.len());
        for x in xs {
            self.ids(x);
        }
    }
    fn f32s(&mut self, xs: &[f32]) {
        self.0.reserve(xs.len() * 4);
        for &x in xs {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
    }
    fn bytes(&mut self, xs: &[u8]) {
        self.u64(xs.len() as u64);
        self.0.extend_from_slice(xs);
    }
}

/// Reads a message, checking lengths against the bytes left.
#[derive(Debug)]
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], kind: Kind) -> Result<Self> {
        if buf.len() < 6 || &buf[..4] != MAGIC {
            return Err(ProtocolError::Header("no `PEMA` magic".into()));
        }
        if buf[4] != VERSION {
            return Err(ProtocolError::Header(format!("version {}", buf[4])));
        }
        if buf[5] != kind as u8 {
            return Err(ProtocolError::Kind {
                expected: kind.name(),
                got: buf[5],
            });
        }
        Ok(Self { buf: &buf[6..] })
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(ProtocolError::Truncated(what));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A count of items of `item_bytes` each, checked against the bytes left.
    fn count(&mut self, item_bytes: usize, what: &'static str) -> Result<usize> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(item_bytes.max(1)) > self.buf.len() {
            return Err(ProtocolError::Truncated(what));
        }
        Ok(n)
    }
    fn u32s(&mut self, n: usize, what: &'static str) -> Result<Vec<u32>> {
        let bytes = self.take(
            n.checked_mul(4).ok_or(ProtocolError::Truncated(what))?,
            what,
        )?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn ids(&mut self, what: &'static str) -> Result<Vec<u32>> {
        let n = self.count(4, what)?;
        (0..n).map(|_| self.u32(what)).collect()
    }
    fn id_lists(&mut self, what: &'static str) -> Result<Vec<Vec<u32>>> {
        let n = self.count(4, what)?;
        (0..n).map(|_| self.ids(what)).collect()
    }
    fn f32s(&mut self, n: usize, what: &'static str) -> Result<Vec<f32>> {
        let bytes = self.take(
            n.checked_mul(4).ok_or(ProtocolError::Truncated(what))?,
            what,
        )?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Invalid(format!(
                "{} trailing bytes",
                self.buf.len()
            )))
        }
    }
}

fn product(a: usize, b: usize, what: &'static str) -> Result<usize> {
    a.checked_mul(b)
        .ok_or_else(|| ProtocolError::Invalid(format!("{what}: {a}×{b} overflows")))
}

impl OpenSession {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::Open);
        w.u32(self.batch);
        w.ids(&self.shared_prefix);
        w.ids(&self.max_new_tokens);
        w.ids(&self.stop_tokens);
        w.id_lists(&self.prompts);
        w.u32(self.log_probs);
        w.0
    }

    /// Decodes the message.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, Kind::Open)?;
        let m = Self {
            batch: r.u32("batch")?,
            shared_prefix: r.ids("shared prefix")?,
            max_new_tokens: r.ids("max new tokens")?,
            stop_tokens: r.ids("stop tokens")?,
            prompts: r.id_lists("prompts")?,
            log_probs: r.u32("log-probs mode")?,
        };
        r.finish()?;
        Ok(m)
    }
}

impl StepReply {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::Step);
        w.u64(self.session);
        w.len(self.seqs.len());
        w.u32(self.hidden);
        for &s in &self.seqs {
            w.u32(s);
        }
        for &s in &self.steps {
            w.u32(s);
        }
        w.f32s(&self.context);
        match &self.log_probs {
            LogProbs::None => w.0.push(0),
            LogProbs::TopK { k, ids, values } => {
                w.0.push(1);
                w.u32(*k);
                for &i in ids {
                    w.u32(i);
                }
                w.f32s(values);
            }
            LogProbs::Full { vocab, values } => {
                w.0.push(2);
                w.u32(*vocab);
                w.f32s(values);
            }
        }
        w.0
    }

    /// Decodes the message.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, Kind::Step)?;
        let session = r.u64("session")?;
        let rows = r.count(8, "rows")?;
        let hidden = r.u32("hidden size")?;
        let seqs = (0..rows)
            .map(|_| r.u32("seqs"))
            .collect::<Result<Vec<_>>>()?;
        let steps = (0..rows)
            .map(|_| r.u32("steps"))
            .collect::<Result<Vec<_>>>()?;
        let context = r.f32s(product(rows, hidden as usize, "context")?, "context")?;
        let log_probs = match r.take(1, "log-probs tag")?[0] {
            0 => LogProbs::None,
            1 => {
                let k = r.u32("k")?;
                let n = product(rows, k as usize, "top-k")?;
                let ids = r.u32s(n, "top-k ids")?;
                let values = r.f32s(n, "top-k values")?;
                LogProbs::TopK { k, ids, values }
            }
            2 => {
                let vocab = r.u32("vocab")?;
                let values = r.f32s(product(rows, vocab as usize, "log-probs")?, "log-probs")?;
                LogProbs::Full { vocab, values }
            }
            t => return Err(ProtocolError::Invalid(format!("log-probs tag {t}"))),
        };
        r.finish()?;
        Ok(Self {
            session,
            seqs,
            steps,
            hidden,
            context,
            log_probs,
        })
    }
}

impl Tokens {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::Tokens);
        w.ids(&self.0);
        w.0
    }

    /// Decodes the message.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, Kind::Tokens)?;
        let t = r.ids("tokens")?;
        r.finish()?;
        Ok(Self(t))
    }
}

impl TeacherForced {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::TeacherForced);
        w.id_lists(&self.prompts);
        w.id_lists(&self.continuations);
        w.0
    }

    /// Decodes the message.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, Kind::TeacherForced)?;
        let prompts = r.id_lists("prompts")?;
        let continuations = r.id_lists("continuations")?;
        r.finish()?;
        Ok(Self {
            prompts,
            continuations,
        })
    }
}

impl Contexts {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::Contexts);
        w.u32(self.hidden);
        w.ids(&self.lens);
        w.f32s(&self.data);
        w.0
    }

    /// Decodes the message.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, Kind::Contexts)?;
        let hidden = r.u32("hidden size")?;
        let lens = r.ids("lengths")?;
        let rows = lens.iter().map(|&l| l as usize).sum::<usize>();
        let data = r.f32s(product(rows, hidden as usize, "contexts")?, "contexts")?;
        r.finish()?;
        Ok(Self { hidden, lens, data })
    }
}

impl HeadMessage {
    /// Encodes the message.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(Kind::Head);
        w.bytes(self.model.as_bytes());
        w.u64(self.eps.to_bits());
        w.u32(self.vocab);
        w.len(self.norm.len());
        w.bytes(self.fingerprint.as_bytes());
        w.f32s(&self.norm);
        w.f32s(&self.weight);
        match &self.packed {
            None => w.0.push(0),
            Some(p) => {
                w.0.push(1);
                w.u32(p.ggml_type);
                w.u32(p.rows);
                w.u32(p.cols);
                w.bytes(&p.data);
            }
        }
        w.0
    }

    /// Decodes the message.
    pub fn decode(buf: &[u8]) -> Result<Self> {
        let mut r = Reader::new(buf, Kind::Head)?;
        let model = r.long_string("model")?;
        let eps = f64::from_bits(r.u64("eps")?);
        let vocab = r.u32("vocab")?;
        let d = r.u32("hidden size")? as usize;
        let fingerprint = r.long_string("fingerprint")?;
        let norm = r.f32s(d, "norm")?;
        let weight = r.f32s(product(vocab as usize, d, "head")?, "head")?;
        let packed = match r.take(1, "packed flag")?[0] {
            0 => None,
            1 => {
                let ggml_type = r.u32("packed type")?;
                let rows = r.u32("packed rows")?;
                let cols = r.u32("packed cols")?;
                let n = r.u64("packed bytes")?;
                let n = usize::try_from(n).map_err(|_| ProtocolError::Truncated("packed head"))?;
                let data = r.take(n, "packed head")?.to_vec();
                Some(PackedHead {
                    ggml_type,
                    rows,
                    cols,
                    data,
                })
            }
            f => return Err(ProtocolError::Invalid(format!("packed flag {f}"))),
        };
        r.finish()?;
        Ok(Self {
            model,
            eps,
            vocab,
            fingerprint,
            norm,
            weight,
            packed,
        })
    }
}

impl Reader<'_> {
    fn long_string(&mut self, what: &'static str) -> Result<String> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).map_err(|_| ProtocolError::Truncated(what))?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| ProtocolError::Invalid(format!("{what} is not UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    //! Round trips, and every truncation or corruption of a valid message is an error, never a
    //! panic or a huge allocation.

    use super::*;

    fn samples() -> Vec<Vec<u8>> {
        vec![
            OpenSession {
                batch: 4,
                shared_prefix: vec![1, 2, 3],
                max_new_tokens: vec![5, 6],
                stop_tokens: vec![9],
                prompts: vec![vec![1, 2], vec![3, 4, 5]],
                log_probs: 5,
            }
            .encode(),
            StepReply {
                session: 7,
                seqs: vec![0, 1],
                steps: vec![3, 0],
                hidden: 2,
                context: vec![0.5, -1.0, 2.0, f32::MIN_POSITIVE],
                log_probs: LogProbs::TopK {
                    k: 2,
                    ids: vec![4, 1, 0, 3],
                    values: vec![-0.1, -2.0, -0.5, -0.9],
                },
            }
            .encode(),
            Tokens(vec![4, 5]).encode(),
            TeacherForced {
                prompts: vec![vec![1]],
                continuations: vec![vec![2, 3]],
            }
            .encode(),
            Contexts {
                hidden: 2,
                lens: vec![1, 2],
                data: vec![1.0; 6],
            }
            .encode(),
            HeadMessage {
                model: "m".into(),
                eps: 1e-6,
                vocab: 3,
                fingerprint: "ab".into(),
                norm: vec![1.0, 2.0],
                weight: vec![0.25; 6],
                packed: Some(PackedHead {
                    ggml_type: 8,
                    rows: 3,
                    cols: 32,
                    data: vec![7; 102],
                }),
            }
            .encode(),
        ]
    }

    fn decode_any(b: &[u8]) -> Vec<bool> {
        vec![
            OpenSession::decode(b).is_ok(),
            StepReply::decode(b).is_ok(),
            Tokens::decode(b).is_ok(),
            TeacherForced::decode(b).is_ok(),
            Contexts::decode(b).is_ok(),
            HeadMessage::decode(b).is_ok(),
        ]
    }

    #[test]
    fn round_trips() {
        let s = samples();
        let open = OpenSession::decode(&s[0]).expect("open");
        assert_eq!(open.prompts, vec![vec![1, 2], vec![3, 4, 5]]);
        let step = StepReply::decode(&s[1]).expect("step");
        assert_eq!(step.context[3], f32::MIN_POSITIVE);
        assert!(matches!(step.log_probs, LogProbs::TopK { k: 2, .. }));
        let full = StepReply {
            log_probs: LogProbs::Full {
                vocab: 3,
                values: vec![-1.0; 6],
            },
            ..step
        };
        assert_eq!(StepReply::decode(&full.encode()).expect("full"), full);
        assert_eq!(Tokens::decode(&s[2]).expect("tokens").0, vec![4, 5]);
        assert_eq!(
            TeacherForced::decode(&s[3]).expect("tf").continuations,
            vec![vec![2, 3]]
        );
        assert_eq!(Contexts::decode(&s[4]).expect("ctx").lens, vec![1, 2]);
        let h = HeadMessage::decode(&s[5]).expect("head");
        assert_eq!(h.packed.expect("packed").data.len(), 102);
        // Each message decodes as its own kind only.
        for (i, b) in s.iter().enumerate() {
            let ok = decode_any(b);
            assert_eq!(ok.iter().filter(|&&x| x).count(), 1, "message {i}");
            assert!(ok[i]);
        }
    }

    #[test]
    fn truncated_extended_or_corrupted_messages_are_errors() {
        for b in samples() {
            for n in 0..b.len() {
                assert!(decode_any(&b[..n]).iter().all(|&ok| !ok), "prefix {n}");
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(decode_any(&longer).iter().all(|&ok| !ok));
            // Every byte flipped to 0xFF: never a panic (counts become huge).
            for i in 0..b.len() {
                let mut c = b.clone();
                c[i] = 0xFF;
                let _ = decode_any(&c);
            }
        }
        let e = Tokens::decode(b"PEMA\x02\x03").expect_err("version");
        assert!(e.to_string().contains("version 2"), "{e}");
        let e = Tokens::decode(&StepReply::decode(b"x").map(|_| vec![]).unwrap_or_default())
            .expect_err("empty");
        assert!(matches!(e, ProtocolError::Header(_)));
    }
}
