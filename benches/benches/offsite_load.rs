//! Load on the PLM owner's service (`pema serve`), loopback only: 1, 8 and 32 concurrent
//! clients decoding WMT22 test sentences with the 3-shot MT prompt through Gemma 3 270M
//! (packed weights, shared prefix), each client one sentence at a time.
//!
//! Reported per level, side by side in one run: throughput (generated tokens/s, all clients),
//! p50/p99 latency of a step (the client's tokens out → the next f(c) back), failed requests
//! (must be 0) and the process's resident memory. The clients here speak the protocol directly
//! and replay each sentence's reference tokens instead of computing P_LM from the head: on one
//! 2-core machine 32 clients' head products would measure CPU contention among the clients,
//! not the service (a real data owner runs its head on its own machine; its cost per step is
//! printed separately).
//!
//! Run: `cargo bench -p pema-benches --bench offsite_load` (needs `cargo xtask fetch-assets`
//! and the WMT22 files in `../shared/data/wmt22`; prints a skip line otherwise). Writes
//! `target/offsite-load.json`. `PEMA_LOAD_SECONDS` sets each level's duration (default 20).

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use burn::backend::Flex;
use pema_backbone::gguf::GgufFile;
use pema_backbone::packed::PackedModel;
use pema_backbone::{CpuKernels, Engine, Kernels, load_model_dir};
use pema_memory::{PairsFile, PromptTemplate};
use pema_offsite::protocol::{OpenSession, StepReply, Tokens};
use pema_offsite::{ServeConfig, Served, serve};

type B = Flex;
const TOKEN: &str = "load-bench";
const MAX_NEW: usize = 48;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One sentence as a client replays it: its prompt and the tokens it will choose.
struct Job {
    prompt: Vec<u32>,
    choices: Vec<u32>,
}

/// What one client measured.
#[derive(Default)]
struct ClientLog {
    tokens: u64,
    failed: u64,
    latencies: Vec<f64>,
}

fn post(agent: &ureq::Agent, url: &str, body: &[u8]) -> Result<StepReply, String> {
    let r = agent
        .post(url)
        .set("Authorization", &format!("Bearer {TOKEN}"))
        .send_bytes(body)
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    r.into_reader()
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    StepReply::decode(&buf).map_err(|e| e.to_string())
}

/// Decodes jobs `first, first + stride, …` until `deadline`.
fn client(
    base: &str,
    jobs: &[Job],
    prefix: &[u32],
    first: usize,
    stride: usize,
    deadline: Instant,
) -> ClientLog {
    let agent = ureq::AgentBuilder::new().build();
    let mut log = ClientLog::default();
    let mut j = first;
    while Instant::now() < deadline {
        let job = &jobs[j % jobs.len()];
        j += stride;
        let open = OpenSession {
            batch: 1,
            shared_prefix: prefix.to_vec(),
            max_new_tokens: vec![job.choices.len() as u32],
            stop_tokens: Vec::new(),
            prompts: vec![job.prompt.clone()],
            log_probs: 0,
        };
        let mut reply = match post(&agent, &format!("{base}/v1/sessions"), &open.encode()) {
            Ok(r) => r,
            Err(_) => {
                log.failed += 1;
                continue;
            }
        };
        let mut k = 0;
        while !reply.is_done() && Instant::now() < deadline {
            let body = Tokens(vec![job.choices[k]]).encode();
            k += 1;
            let t = Instant::now();
            match post(
                &agent,
                &format!("{base}/v1/sessions/{}/tokens", reply.session),
                &body,
            ) {
                Ok(r) => {
                    log.latencies.push(t.elapsed().as_secs_f64());
                    log.tokens += 1;
                    reply = r;
                }
                Err(_) => {
                    log.failed += 1;
                    break;
                }
            }
        }
        if !reply.is_done() {
            let _ = agent
                .delete(&format!("{base}/v1/sessions/{}", reply.session))
                .set("Authorization", &format!("Bearer {TOKEN}"))
                .call();
        }
    }
    log
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn rss_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let model_dir = root().join("assets/gemma-3-270m");
    let test = root().join("../shared/data/wmt22/test.json");
    if !model_dir.join("model.gguf").is_file() || !test.is_file() {
        println!(
            "SKIPPED offsite_load: {} or {} absent (cargo xtask fetch-assets; the WMT22 files)",
            model_dir.display(),
            test.display()
        );
        return;
    }
    let seconds: f64 = std::env::var("PEMA_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20.0);
    let device = Default::default();
    let m = load_model_dir::<B>(&model_dir, &device).expect("model");
    let gguf = GgufFile::open(&model_dir.join("model.gguf")).expect("gguf");
    let packed = PackedModel::from_gguf(&gguf, m.model.config.n_layers).expect("packed");
    let kernels = CpuKernels::with_packed(Arc::new(packed));
    // The client's own cost per step: the head product for one row (measured once).
    let h = burn::tensor::Tensor::<B, 2>::zeros([1, m.model.config.hidden_size], &device);
    let t = Instant::now();
    for _ in 0..5 {
        let _ = Kernels::<B>::head(&kernels, &m.model.head, h.clone()).into_data();
    }
    let client_head_ms = t.elapsed().as_secs_f64() * 1000.0 / 5.0;
    let engine = Engine::new(&m.model).with_kernels(Box::new(kernels));
    let template = PromptTemplate::from_file(&root().join("fixtures/templates/mt-3shot.txt"))
        .expect("template");
    let prefix = pema_pipeline::serve::template_prefix(&m.tokenizer, &template).expect("prefix");
    let newline = m.tokenizer.stop_ids();
    let pairs = PairsFile::read(&test).expect("test pairs");
    let jobs: Vec<Job> = pairs
        .pairs
        .iter()
        .take(256)
        .map(|p| {
            let mut choices = m.tokenizer.encode_continuation(&p.target).expect("target");
            choices.truncate(MAX_NEW - 1);
            choices.push(*newline.last().unwrap_or(&0));
            Job {
                prompt: m
                    .tokenizer
                    .encode_prompt(&template.render(&p.source))
                    .expect("prompt"),
                choices,
            }
        })
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = Served {
        engine: &engine,
        tokenizer: &m.tokenizer,
        weights_sha256: m.weights_sha256.clone(),
    };
    let config = ServeConfig {
        tokens: vec![TOKEN.into()],
        ..ServeConfig::default()
    };
    println!(
        "offsite load: Gemma 3 270M packed, 3-shot MT prompts (shared prefix {} tokens), {seconds} s per level; client head product {client_head_ms:.1} ms/row (not in these figures)",
        prefix.len()
    );
    let rows = std::thread::scope(|s| {
        let driver = s.spawn(|| {
            let mut rows = Vec::new();
            for clients in [1usize, 8, 32] {
                let start = Instant::now();
                let deadline = start + Duration::from_secs_f64(seconds);
                let logs: Vec<ClientLog> = std::thread::scope(|s2| {
                    let hs: Vec<_> = (0..clients)
                        .map(|c| {
                            let (base, jobs, prefix) = (&base, &jobs, &prefix);
                            s2.spawn(move || client(base, jobs, prefix, c, clients, deadline))
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().unwrap_or_default()).collect()
                });
                let elapsed = start.elapsed().as_secs_f64();
                let tokens: u64 = logs.iter().map(|l| l.tokens).sum();
                let failed: u64 = logs.iter().map(|l| l.failed).sum();
                let mut lat: Vec<f64> = logs.iter().flat_map(|l| l.latencies.clone()).collect();
                lat.sort_by(f64::total_cmp);
                let row = serde_json::json!({
                    "clients": clients,
                    "tokens": tokens,
                    "seconds": elapsed,
                    "tokens_per_s": tokens as f64 / elapsed,
                    "step_p50_ms": quantile(&lat, 0.5) * 1000.0,
                    "step_p99_ms": quantile(&lat, 0.99) * 1000.0,
                    "failed_requests": failed,
                    "rss_mib": rss_mib("VmRSS:"),
                    "peak_rss_mib": rss_mib("VmHWM:"),
                });
                println!(
                    "{clients:>3} clients: {:>8.1} tokens/s, step p50 {:>7.1} ms, p99 {:>7.1} ms, {failed} failed, RSS {:.0} MiB (peak {:.0})",
                    tokens as f64 / elapsed,
                    quantile(&lat, 0.5) * 1000.0,
                    quantile(&lat, 0.99) * 1000.0,
                    rss_mib("VmRSS:"),
                    rss_mib("VmHWM:"),
                );
                rows.push(row);
            }
            let _ = stop.send(());
            rows
        });
        let stats = serve(&served, &config, listener, async move {
            let _ = stopped.await;
        })
        .expect("serve");
        println!(
            "server: {} forwards, {} rows, at most {} rows in one forward, {} sessions",
            stats.forwards, stats.rows, stats.max_rows_in_forward, stats.sessions_opened
        );
        driver.join().expect("driver")
    });
    let tps = |i: usize| rows[i]["tokens_per_s"].as_f64().unwrap_or(0.0);
    let ratio = tps(2) / tps(0).max(1e-9);
    println!("throughput 32 clients / 1 client: ×{ratio:.2}");
    let out = root().join("target/offsite-load.json");
    let report = serde_json::json!({
        "model": "gemma-3-270m (packed)",
        "seconds_per_level": seconds,
        "client_head_ms_per_row": client_head_ms,
        "levels": rows,
        "ratio_32_over_1": ratio,
    });
    if std::fs::write(
        &out,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .is_ok()
    {
        println!("written {}", out.display());
    }
}
