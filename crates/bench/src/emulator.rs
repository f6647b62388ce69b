//! `emulator`: how fast graph-emulator ingests, so we know it is not the
//! bottleneck of the upload benchmarks. A plain HTTP client in this process
//! (no sharepush code) sends one 1 GiB file as an upload session with 10 MiB
//! fragments, then 5,000 small files by simple PUT, 16 at a time. The client's
//! CPU is included in the CPU column: the emulator alone is cheaper.

use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::Args;
use crate::measure::{Cost, Row, cpu_seconds};

const FRAGMENT: usize = 10 * 1024 * 1024;
const SMALL_FILES: usize = 5_000;
const SMALL_SIZE: usize = 8 * 1024;
const CONCURRENCY: usize = 16;

/// A bare Graph client: enough to create folders and upload sessions.
pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) graph: String,
    pub(crate) drive: String,
    pub(crate) token: String,
}

impl Client {
    /// Uploads `total` bytes (a repeated in-memory pattern, no disk read) to
    /// `path` in one upload session with 10 MiB fragments: the emulator's
    /// ingest rate, as close to the wire as a client gets.
    pub(crate) async fn session_upload(&self, path: &str, total: u64) -> anyhow::Result<()> {
        let mut chunk = vec![0u8; FRAGMENT];
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = (i as u32).wrapping_mul(2_654_435_761) as u8;
        }
        let chunk = Bytes::from(chunk);
        let session = self
            .send(
                self.http
                    .post(format!(
                        "{}/drives/{}/root:/{path}:/createUploadSession",
                        self.graph, self.drive
                    ))
                    .bearer_auth(&self.token)
                    .json(&json!({"item": {"@microsoft.graph.conflictBehavior": "replace"}})),
                "create upload session",
            )
            .await?;
        let upload_url = session["uploadUrl"]
            .as_str()
            .context("no uploadUrl")?
            .to_string();
        let mut offset = 0u64;
        while offset < total {
            let len = (total - offset).min(FRAGMENT as u64);
            let body = chunk.slice(..len as usize);
            let range = format!("bytes {}-{}/{}", offset, offset + len - 1, total);
            self.send(
                self.http
                    .put(&upload_url)
                    .header("Content-Range", range)
                    .body(body),
                "upload fragment",
            )
            .await?;
            offset += len;
        }
        Ok(())
    }

    async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let resp = req.send().await.with_context(|| what.to_string())?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "{what}: HTTP {status}: {body}");
        Ok(body)
    }

    async fn folder(&self, parent: &str, name: &str) -> anyhow::Result<()> {
        let url = if parent.is_empty() {
            format!("{}/drives/{}/root/children", self.graph, self.drive)
        } else {
            format!(
                "{}/drives/{}/root:/{parent}:/children",
                self.graph, self.drive
            )
        };
        let body =
            json!({"name": name, "folder": {}, "@microsoft.graph.conflictBehavior": "replace"});
        self.send(
            self.http.post(url).bearer_auth(&self.token).json(&body),
            "create folder",
        )
        .await
        .map(|_| ())
    }
}

pub fn emulator(args: &Args) -> anyhow::Result<Vec<Row>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

async fn run(args: &Args) -> anyhow::Result<Vec<Row>> {
    // Already installed is fine (Err only says so).
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&args.work_dir)?;
    let data = std::fs::canonicalize(&args.work_dir)?.join("emulator-data");
    if data.exists() {
        std::fs::remove_dir_all(&data)?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let options = graph_emulator::Options {
        data_dir: Some(data.clone()),
        ..Default::default()
    };
    let emu = graph_emulator::serve(listener, options, std::future::pending()).await?;
    let tokens = emu.user_tokens(
        "00000000-0000-0000-0000-000000000000",
        "Files.ReadWrite.All Sites.ReadWrite.All offline_access",
    );
    let token = tokens["access_token"]
        .as_str()
        .context("emulator minted no access token")?
        .to_string();
    let client = Arc::new(Client {
        http: reqwest::Client::builder().build()?,
        graph: emu.graph_url(),
        drive: emu.drive_id(),
        token,
    });
    client.folder("", "bench").await?;
    client.folder("bench", "small").await?;

    // One large file by upload session.
    let total = (args.hash_mib * 1024 * 1024) as u64;
    let started = std::time::Instant::now();
    let before = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    client.session_upload("bench/big.bin", total).await?;
    let big_wall = started.elapsed().as_secs_f64();
    let after = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let big_cpu = cpu_seconds(&after) - cpu_seconds(&before);
    let stored = emu
        .tree()
        .into_iter()
        .find(|e| e.path == "bench/big.bin")
        .context("big.bin did not arrive")?;
    if stored.size != total {
        bail!("big.bin arrived with {} bytes of {total}", stored.size);
    }

    // Many small files, 16 at a time.
    let small = Bytes::from(vec![7u8; SMALL_SIZE]);
    let gate = Arc::new(Semaphore::new(CONCURRENCY));
    let started = std::time::Instant::now();
    let before = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let mut tasks = JoinSet::new();
    for i in 0..SMALL_FILES {
        let permit = gate.clone().acquire_owned().await?;
        let client = client.clone();
        let body = small.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let url = format!(
                "{}/drives/{}/root:/bench/small/f{i:05}.bin:/content",
                client.graph, client.drive
            );
            client
                .send(
                    client.http.put(url).bearer_auth(&client.token).body(body),
                    "simple upload",
                )
                .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let small_wall = started.elapsed().as_secs_f64();
    let after = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)?;
    let small_cpu = cpu_seconds(&after) - cpu_seconds(&before);
    let arrived = emu
        .tree()
        .iter()
        .filter(|e| e.path.starts_with("bench/small/"))
        .count();
    ensure!(
        arrived == SMALL_FILES,
        "{arrived} of {SMALL_FILES} small files arrived"
    );
    emu.shutdown().await.ok();
    let _ = std::fs::remove_dir_all(&data);

    let big_cost = Cost {
        wall_s: big_wall,
        cpu_s: big_cpu,
        max_rss_kib: 0,
    };
    let small_cost = Cost {
        wall_s: small_wall,
        cpu_s: small_cpu,
        max_rss_kib: 0,
    };
    Ok(vec![
        Row {
            scenario: "emulator".into(),
            name: format!(
                "ingest {} MiB, one upload session, 10 MiB fragments",
                args.hash_mib
            ),
            cost: big_cost,
            mb_per_s: Some(total as f64 / 1e6 / big_wall),
            ratio: None,
            target: "reference for upload-large".into(),
            met: None,
        },
        Row {
            scenario: "emulator".into(),
            name: format!(
                "ingest {SMALL_FILES} x 8 KiB, simple PUT, {CONCURRENCY}-way ({:.0} files/s)",
                SMALL_FILES as f64 / small_wall
            ),
            cost: small_cost,
            mb_per_s: Some((SMALL_FILES * SMALL_SIZE) as f64 / 1e6 / small_wall),
            ratio: None,
            target: "reference for upload-small".into(),
            met: None,
        },
    ])
}
