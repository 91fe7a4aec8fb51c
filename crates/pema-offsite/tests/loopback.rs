//! The PLM owner as a service on loopback, on a tiny random Gemma 3 with a packed (Q8_0) head:
//! remote generation and memory construction are bit-identical to in-process; the bytes a
//! client sends hold no training target; auth, limits, bad messages and vanished clients get
//! clear answers while the server keeps serving.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn::backend::Flex;
use pema_backbone::gguf::{GgmlType, quantize};
use pema_backbone::packed::{PackedMatrix, PackedModel};
use pema_backbone::testing::tiny_model;
use pema_backbone::{
    CpuKernels, Engine, Family, GenerateOptions, PemaTokenizer, Plm, StepOutput, StepPolicy,
    Transformer,
};
use pema_memory::{
    BuildConfig, BuildMode, KeyDtype, KeyState, ModelInfo, PairTokenizer, PairsFile,
    PromptTemplate, build_memory,
};
use pema_offsite::protocol::{OpenSession, Tokens};
use pema_offsite::{Limits, RemotePlm, ServeConfig, ServeStats, Served, serve};

type B = Flex;
const TOKEN: &str = "s3cret-token";

fn model() -> Transformer<B> {
    tiny_model::<B>(Family::Gemma3, 7, &Default::default()).expect("tiny model")
}

/// CPU kernels with the head packed as Q8_0 (as a GGUF Gemma 3's engine multiplies it).
fn packed_kernels(m: &Transformer<B>) -> CpuKernels {
    let w = m
        .head
        .weight
        .to_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("head");
    let [rows, cols] = m.head.weight.dims();
    let bytes = quantize(GgmlType::Q8_0, &w).expect("quantize");
    let head = PackedMatrix::new(GgmlType::Q8_0, rows, cols, bytes).expect("packed");
    CpuKernels::with_packed(Arc::new(PackedModel::head_only(head)))
}

fn engine(m: &Transformer<B>) -> Engine<'_, B> {
    Engine::new(m)
        .with_kernels(Box::new(packed_kernels(m)))
        .with_max_batch(2)
}

/// A word-level tokenizer over the tiny vocabulary: `a`–`z` are ids 3–28, BOS 1, EOS 2.
fn tokenizer() -> PemaTokenizer {
    let mut vocab = serde_json::Map::new();
    for (i, w) in ["<unk>", "<bos>", "<eos>"].iter().enumerate() {
        vocab.insert((*w).into(), i.into());
    }
    for c in b'a'..=b'z' {
        vocab.insert((c as char).to_string(), (u32::from(c - b'a') + 3).into());
    }
    let json = serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    PemaTokenizer::from_json(&json.to_string(), true, Some(1), vec![2]).expect("tokenizer")
}

fn config() -> ServeConfig {
    ServeConfig {
        tokens: vec![TOKEN.into()],
        // Generous: a loaded CI machine must not expire a working client's session.
        idle_timeout: Duration::from_secs(20),
        drain_timeout: Duration::from_secs(5),
        ..ServeConfig::default()
    }
}

/// Serves `engine` on a loopback port while `client(url)` runs; returns its result and the
/// server's counters.
fn with_server<R: Send>(
    engine: &Engine<'_, B>,
    cfg: &ServeConfig,
    client: impl FnOnce(String) -> R + Send,
) -> (R, ServeStats) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tok = tokenizer();
    let served = Served {
        engine,
        tokenizer: &tok,
        weights_sha256: "ab".repeat(32),
    };
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            let r = client(url);
            let _ = stop.send(());
            r
        });
        let stats = serve(&served, cfg, listener, async move {
            let _ = stopped.await;
        })
        .expect("serve");
        (h.join().expect("client thread"), stats)
    })
}

/// Records every step it sees and picks a token that is not always the argmax (so the
/// client's choices, not the server's, drive generation).
#[derive(Default)]
struct Recorder {
    steps: Vec<Seen>,
}

/// One step as a policy saw it: rows' sequences and steps, f(c) bits, logits bits.
type Seen = (Vec<usize>, Vec<usize>, Vec<u32>, Vec<u32>);

impl StepPolicy<B> for Recorder {
    fn next_tokens(&mut self, out: &StepOutput<B>) -> Vec<u32> {
        let bits = |t: burn::tensor::Tensor<B, 2>| -> Vec<u32> {
            t.into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("host")
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        let argmax = pema_backbone::seam::argmax_rows(out.logits.clone());
        let ids = argmax
            .iter()
            .zip(&out.steps)
            .map(|(&a, &s)| if s % 3 == 1 { (a + 5) % 61 } else { a })
            .collect();
        self.steps.push((
            out.seqs.clone(),
            out.steps.clone(),
            bits(out.context.0.clone()),
            bits(out.logits.clone()),
        ));
        ids
    }
}

fn prompts() -> Vec<Vec<u32>> {
    let prefix = [1u32, 9, 4, 17, 22];
    (0..5u32)
        .map(|i| {
            let mut p = prefix.to_vec();
            p.extend((0..=i).map(|j| 3 + (i * 7 + j * 3) % 26));
            p
        })
        .collect()
}

#[test]
fn remote_generation_is_bit_identical_to_in_process() {
    let m = model();
    let mut local = engine(&m);
    local.set_prefix(&[1, 9, 4, 17]).expect("prefix");
    let opts = GenerateOptions {
        max_new_tokens: vec![6, 3, 7, 1, 5],
        stop_tokens: vec![2, 40],
    };
    let mut want = Recorder::default();
    let want_out = local.generate(&prompts(), &opts, &mut want).expect("local");
    let server_engine = engine(&m);
    let ((got_out, got), stats) = with_server(&server_engine, &config(), |url| {
        let plm = RemotePlm::<B>::connect(&url, TOKEN, &Default::default())
            .expect("connect")
            .with_batch(2)
            .with_shared_prefix(vec![1, 9, 4, 17]);
        assert_eq!(plm.info().kernels, "cpu-packed");
        let mut got = Recorder::default();
        let out = plm.generate(&prompts(), &opts, &mut got).expect("remote");
        (out, got)
    });
    assert_eq!(got_out, want_out);
    assert_eq!(got.steps.len(), want.steps.len());
    for (g, w) in got.steps.iter().zip(&want.steps) {
        assert_eq!(
            g, w,
            "a step differs (rows, steps, f(c) bits, P_LM logits bits)"
        );
    }
    assert_eq!(stats.sessions_opened, 1);
    assert_eq!(stats.sessions_finished, 1);
}

/// Letters as the tiny model's tokens (for the memory builder).
struct Letters;

impl PairTokenizer for Letters {
    fn encode_prompt(&self, text: &str) -> pema_memory::error::Result<Vec<u32>> {
        let mut v = vec![1];
        v.extend(self.encode_target(text)?);
        Ok(v)
    }
    fn encode_target(&self, text: &str) -> pema_memory::error::Result<Vec<u32>> {
        Ok(text
            .bytes()
            .filter(u8::is_ascii_lowercase)
            .map(|b| u32::from(b - b'a') + 3)
            .collect())
    }
    fn stop_ids(&self) -> Vec<u32> {
        vec![2]
    }
    fn fingerprint(&self) -> String {
        "letters".into()
    }
}

fn build(
    plm: &dyn Plm<B>,
    pairs: &Path,
    out: &Path,
    mode: BuildMode,
) -> pema_memory::error::Result<u64> {
    let cfg = BuildConfig {
        mode,
        dtype: KeyDtype::F32,
        template: PromptTemplate::from_text("t", "q {source} a").expect("template"),
        batch_size: 2,
        pairs_per_shard: 2,
        max_extra_steps: 3,
        limit: None,
        progress: false,
    };
    let info = ModelInfo {
        name: "tiny".into(),
        weights_sha256: "ab".repeat(32),
        hidden_size: 32,
        state: KeyState::pre_final_norm(2),
    };
    let file = PairsFile::read(pairs)?;
    build_memory(plm, &Letters, &info, &file, &cfg, out).map(|s| s.entries)
}

/// A TCP relay that records every byte the client sends.
fn recording_proxy(upstream: String) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = sent.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(mut client) = client else { break };
            let Ok(mut server) = TcpStream::connect(upstream.trim_start_matches("http://")) else {
                break;
            };
            let (mut c2, mut s2) = (
                client.try_clone().expect("clone"),
                server.try_clone().expect("clone"),
            );
            let log = log.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while let Ok(n) = c2.read(&mut buf) {
                    if n == 0 || server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    log.lock().expect("log").extend_from_slice(&buf[..n]);
                }
                let _ = server.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut client);
                let _ = client.shutdown(Shutdown::Write);
            });
        }
    });
    (url, sent)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn free_running_memory_is_identical_and_no_target_crosses_the_wire() {
    let tmp = tempfile::tempdir().expect("tmp");
    let targets = ["zyxwv", "qqjzk", "vzxq"];
    let pairs = tmp.path().join("pairs.tsv");
    std::fs::write(
        &pairs,
        format!(
            "b c d\t{}\ne f\t{}\ng h i j\t{}\n",
            targets[0], targets[1], targets[2]
        ),
    )
    .expect("pairs");
    let m = model();
    let local = engine(&m);
    let n = build(
        &local,
        &pairs,
        &tmp.path().join("local"),
        BuildMode::FreeRunning,
    )
    .expect("local");
    assert!(n > 0);
    let server_engine = engine(&m);
    let ((sent, disclosed), _) = with_server(&server_engine, &config(), |url| {
        let url_for_control = url.clone();
        let (proxy, sent) = recording_proxy(url);
        let plm = RemotePlm::<B>::connect(&proxy, TOKEN, &Default::default()).expect("connect");
        let remote = plm.with_batch(2);
        let got = build(
            &remote,
            &pairs,
            &tmp.path().join("remote"),
            BuildMode::FreeRunning,
        )
        .expect("remote build");
        assert_eq!(got, n);
        // Teacher forcing needs the explicit disclosure.
        let e = build(
            &remote,
            &pairs,
            &tmp.path().join("tf"),
            BuildMode::TeacherForced,
        )
        .expect_err("teacher forcing refused");
        assert!(e.to_string().contains("send the training targets"), "{e}");
        std::thread::sleep(Duration::from_millis(50));
        let bytes = sent.lock().expect("log").clone();
        // Control: with the disclosure, teacher forcing does send the targets (and the
        // detector below sees them).
        let (proxy, disclosed) = recording_proxy(url_for_control);
        let plm = RemotePlm::<B>::connect(&proxy, TOKEN, &Default::default())
            .expect("connect")
            .disclose_targets();
        build(
            &plm,
            &pairs,
            &tmp.path().join("tf-disclosed"),
            BuildMode::TeacherForced,
        )
        .expect("disclosed teacher forcing");
        std::thread::sleep(Duration::from_millis(50));
        let disclosed = disclosed.lock().expect("log").clone();
        (bytes, disclosed)
    });
    for f in std::fs::read_dir(tmp.path().join("local")).expect("dir") {
        let f = f.expect("entry").path();
        let name = f.file_name().expect("name").to_string_lossy().to_string();
        if name.starts_with("shard-") {
            let other = tmp.path().join("remote").join(&name);
            assert_eq!(
                std::fs::read(&f).expect("read"),
                std::fs::read(&other).expect("read remote shard"),
                "{name} differs"
            );
        }
    }
    assert!(sent.len() > 1000, "the proxy saw the client's requests");
    for t in targets {
        assert!(!contains(&sent, t.as_bytes()), "target text {t} was sent");
        let ids: Vec<u8> = Letters
            .encode_target(t)
            .expect("ids")
            .iter()
            .flat_map(|i| i.to_le_bytes())
            .collect();
        assert!(!contains(&sent, &ids), "target tokens of {t} were sent");
        assert!(contains(&disclosed, &ids), "the control sends {t}'s tokens");
    }
}

#[test]
fn teacher_forcing_with_disclosure_matches_in_process() {
    let m = model();
    let local = engine(&m);
    let prompts = prompts();
    let conts: Vec<Vec<u32>> = (0..5u32).map(|i| vec![3 + i, 10, 20 - i]).collect();
    let want = local
        .teacher_forced_contexts(&prompts, &conts)
        .expect("local");
    let server_engine = engine(&m);
    let (got, _) = with_server(&server_engine, &config(), |url| {
        let plm = RemotePlm::<B>::connect(&url, TOKEN, &Default::default())
            .expect("connect")
            .disclose_targets();
        plm.teacher_forced_contexts(&prompts, &conts)
            .expect("remote")
    });
    for (g, w) in got.into_iter().zip(want) {
        assert_eq!(g.into_data(), w.into_data());
    }
}

/// A raw request: (status, body).
fn raw(url: &str, method: &str, path: &str, token: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let r = ureq::request(method, &format!("{url}{path}"))
        .set("Authorization", &format!("Bearer {token}"))
        .send_bytes(body);
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport: {e}"),
    };
    let status = resp.status();
    let mut b = Vec::new();
    resp.into_reader().read_to_end(&mut b).expect("body");
    (status, b)
}

#[test]
fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let m = model();
    let server_engine = engine(&m);
    let cfg = ServeConfig {
        limits: Limits {
            max_body_bytes: 4096,
            max_sessions: 2,
            ..Limits::default()
        },
        idle_timeout: Duration::from_secs(1),
        ..config()
    };
    let (_, stats) = with_server(&server_engine, &cfg, |url| {
        // Wrong or missing token: 401, and the client says so.
        assert_eq!(raw(&url, "GET", "/v1/info", "nope", b"").0, 401);
        let e = RemotePlm::<B>::connect(&url, "nope", &Default::default()).expect_err("401");
        assert!(e.to_string().contains("401"), "{e}");
        // Truncated and foreign messages: 400 with the reason.
        let open = OpenSession {
            batch: 2,
            max_new_tokens: vec![3],
            prompts: vec![vec![1, 5, 6]],
            ..OpenSession::default()
        }
        .encode();
        let (s, b) = raw(&url, "POST", "/v1/sessions", TOKEN, &open[..open.len() - 3]);
        assert_eq!(s, 400);
        assert!(String::from_utf8_lossy(&b).contains("truncated"));
        assert_eq!(
            raw(&url, "POST", "/v1/sessions", TOKEN, b"GET / HTTP").0,
            400
        );
        // Oversized: 413.
        let big = OpenSession {
            batch: 1,
            max_new_tokens: vec![1],
            prompts: vec![vec![5; 2000]],
            ..OpenSession::default()
        };
        assert_eq!(
            raw(&url, "POST", "/v1/sessions", TOKEN, &big.encode()).0,
            413
        );
        // Out of the vocabulary, unknown session, wrong number of tokens.
        let bad = OpenSession {
            batch: 1,
            max_new_tokens: vec![1],
            prompts: vec![vec![1, 999]],
            ..OpenSession::default()
        };
        let (s, b) = raw(&url, "POST", "/v1/sessions", TOKEN, &bad.encode());
        assert_eq!(s, 400, "{}", String::from_utf8_lossy(&b));
        let tokens = Tokens(vec![3]).encode();
        assert_eq!(
            raw(&url, "POST", "/v1/sessions/77/tokens", TOKEN, &tokens).0,
            404
        );
        // A client that opens a session and vanishes: the session expires.
        let (s, _) = raw(&url, "POST", "/v1/sessions", TOKEN, &open);
        assert_eq!(s, 200);
        let (s, _) = raw(&url, "POST", "/v1/sessions", TOKEN, &open);
        assert_eq!(s, 200);
        // Two sessions are open (the limit): a third gets 503 until they expire.
        assert_eq!(raw(&url, "POST", "/v1/sessions", TOKEN, &open).0, 503);
        std::thread::sleep(Duration::from_millis(1600));
        // A well-behaved client is served afterwards.
        let plm = RemotePlm::<B>::connect(&url, TOKEN, &Default::default()).expect("connect");
        let opts = GenerateOptions::uniform(4, vec![2]);
        let out = plm
            .generate(&prompts(), &opts, &mut pema_backbone::Greedy)
            .expect("served after the faults");
        assert_eq!(out.len(), 5);
        let tok = plm.tokenizer().expect("tokenizer");
        assert_eq!(tok.fingerprint(), tokenizer().fingerprint());
    });
    assert_eq!(stats.sessions_expired, 2);
    assert_eq!(stats.sessions_finished, 1);
}

#[test]
fn shutdown_lets_open_sessions_finish_and_refuses_new_ones() {
    let m = model();
    let server_engine = engine(&m);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tok = tokenizer();
    let served = Served {
        engine: &server_engine,
        tokenizer: &tok,
        weights_sha256: "ab".repeat(32),
    };
    let open = OpenSession {
        batch: 1,
        max_new_tokens: vec![4],
        prompts: vec![vec![1, 5, 6]],
        ..OpenSession::default()
    }
    .encode();
    let stats = std::thread::scope(|s| {
        let client = s.spawn(move || {
            let (status, body) = raw(&url, "POST", "/v1/sessions", TOKEN, &open);
            assert_eq!(status, 200);
            let mut step = pema_offsite::protocol::StepReply::decode(&body).expect("step");
            stop.send(()).expect("shutdown");
            std::thread::sleep(Duration::from_millis(300));
            let (status, body) = raw(&url, "POST", "/v1/sessions", TOKEN, &open);
            assert_eq!(status, 503);
            assert!(String::from_utf8_lossy(&body).contains("shutting down"));
            let mut n = 0;
            while !step.is_done() {
                let path = format!("/v1/sessions/{}/tokens", step.session);
                let (status, body) = raw(&url, "POST", &path, TOKEN, &Tokens(vec![7]).encode());
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                step = pema_offsite::protocol::StepReply::decode(&body).expect("step");
                n += 1;
            }
            assert_eq!(
                n, 4,
                "the open session ran to its end after the shutdown request"
            );
        });
        let cfg = ServeConfig {
            idle_timeout: Duration::from_secs(5),
            ..config()
        };
        let stats = serve(&served, &cfg, listener, async move {
            let _ = stopped.await;
        })
        .expect("serve");
        client.join().expect("client");
        stats
    });
    assert_eq!(stats.sessions_finished, 1);
}

#[test]
fn tls_serves_the_same_steps() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls");
    let m = model();
    let local = engine(&m);
    let opts = GenerateOptions::uniform(4, vec![2]);
    let want = local
        .generate(&prompts(), &opts, &mut pema_backbone::Greedy)
        .expect("local");
    let server_engine = engine(&m);
    let cfg = ServeConfig {
        tls: Some(
            pema_offsite::tls::server_config(&dir.join("cert.pem"), &dir.join("key.pem"))
                .expect("server tls"),
        ),
        ..config()
    };
    let (got, _) = with_server(&server_engine, &cfg, |url| {
        let https = url.replace("http://", "https://");
        let ca = pema_offsite::tls::client_config(&dir.join("ca.pem")).expect("client tls");
        let plm = RemotePlm::<B>::connect_with(&https, TOKEN, Some(ca), &Default::default())
            .expect("connect over TLS")
            .with_batch(2);
        // Plain HTTP to a TLS server, and TLS without trusting its CA, fail clearly.
        let e = RemotePlm::<B>::connect(&url, TOKEN, &Default::default()).expect_err("plain");
        assert!(e.to_string().contains("cannot reach"), "{e}");
        let e = RemotePlm::<B>::connect(&https, TOKEN, &Default::default()).expect_err("untrusted");
        assert!(e.to_string().contains("cannot reach"), "{e}");
        plm.generate(&prompts(), &opts, &mut pema_backbone::Greedy)
            .expect("remote over TLS")
    });
    assert_eq!(got, want);
    let e = pema_offsite::tls::server_config(&dir.join("README.md"), &dir.join("key.pem"))
        .expect_err("not a certificate");
    assert!(e.to_string().contains("README.md"), "{e}");
}

/// Keeps each step's logits as host rows (for the log-probability modes).
#[derive(Default)]
struct Logits(Vec<Vec<f32>>);

impl StepPolicy<B> for Logits {
    fn next_tokens(&mut self, out: &StepOutput<B>) -> Vec<u32> {
        self.0.push(
            out.logits
                .clone()
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .expect("host"),
        );
        pema_backbone::seam::argmax_rows(out.logits.clone())
    }
}

#[test]
fn server_log_probs_full_and_top_k() {
    let m = model();
    let mut local = engine(&m);
    local.set_prefix(&[1, 9, 4, 17]).expect("prefix");
    let opts = GenerateOptions::uniform(5, vec![2]);
    let mut want = Logits::default();
    let want_out = local.generate(&prompts(), &opts, &mut want).expect("local");
    let server_engine = engine(&m);
    let ((full_out, full, topk_out, topk, e), _) = with_server(&server_engine, &config(), |url| {
        let connect = || {
            RemotePlm::<B>::connect(&url, TOKEN, &Default::default())
                .expect("connect")
                .with_batch(2)
                .with_shared_prefix(vec![1, 9, 4, 17])
        };
        let mut full = Logits::default();
        let plm = connect().with_server_log_probs(pema_offsite::protocol::FULL_LOG_PROBS);
        let full_out = plm.generate(&prompts(), &opts, &mut full).expect("full");
        let mut topk = Logits::default();
        let plm = connect().with_server_log_probs(3);
        let topk_out = plm.generate(&prompts(), &opts, &mut topk).expect("top-k");
        let e = connect()
            .with_server_log_probs(1 << 20)
            .generate(&prompts(), &opts, &mut Logits::default())
            .expect_err("k over the vocabulary");
        (full_out, full, topk_out, topk, e.to_string())
    });
    assert_eq!(full_out, want_out);
    assert_eq!(topk_out, want_out);
    assert!(e.contains("400") && e.contains("top-"), "{e}");
    let vocab = 61;
    for ((w, f), t) in want.0.iter().zip(&full.0).zip(&topk.0) {
        for ((w, f), t) in w.chunks(vocab).zip(f.chunks(vocab)).zip(t.chunks(vocab)) {
            let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = max + w.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
            for (x, y) in w.iter().zip(f) {
                assert!((x - lse - y).abs() < 1e-4, "log-prob {y} vs {}", x - lse);
            }
            assert_eq!(t.iter().filter(|x| x.is_finite()).count(), 3);
        }
    }
}

#[test]
fn concurrent_clients_share_forwards_within_the_row_cap() {
    let m = model();
    let server_engine = engine(&m);
    let cfg = ServeConfig {
        limits: Limits {
            max_rows_per_forward: 3,
            ..Limits::default()
        },
        ..config()
    };
    let opts = GenerateOptions::uniform(6, vec![]);
    let (outs, stats) = with_server(&server_engine, &cfg, |url| {
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let plm = RemotePlm::<B>::connect(&url, TOKEN, &Default::default())
                            .expect("connect")
                            .with_batch(2);
                        plm.generate(&prompts(), &opts, &mut pema_backbone::Greedy)
                            .expect("generate")
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("client"))
                .collect::<Vec<_>>()
        })
    });
    for out in &outs {
        assert_eq!(out.len(), 5);
        assert!(
            out.iter().all(|o| o.len() == 6),
            "every sequence ran to its length"
        );
    }
    assert_eq!(stats.sessions_finished, 4);
    assert!(stats.max_rows_in_forward <= 3, "{stats:?}");
    assert_eq!(stats.rows, 4 * 5 * 6, "one row per generated token");
}
