//! `lorasweep demo`: the whole system on a laptop, with nothing downloaded. It generates a tiny
//! Qwen2-shaped model and chat data in the no_robots format, starts a coordinator in-process on
//! a SQLite file in the output directory and local candle workers against it over real gRPC,
//! submits the study's 5 inits × 7 lrs grid, shows live progress, then prints the study's tables
//! and writes them (Markdown) and the plots (PNG, SVG) next to the database.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;
use lorasweep_common::{LoraInit, sweep::STUDY_LRS};
use lorasweep_proto::pb;
use lorasweep_train::tiny::{self, TinyModelConfig};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    client, cmd_results,
    cmd_watch::{self, WatchArgs},
    results_render::{self, Format},
};

/// Arguments of `lorasweep demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Where the model, data, database, tables and plots go.
    #[arg(long, default_value = "lorasweep-demo")]
    pub(crate) out: PathBuf,
    /// Seeds per cell (42, 43, …); more seeds give error bars and take proportionally longer.
    #[arg(long, default_value_t = 1)]
    pub(crate) seeds: u64,
    /// Local workers (each trains one job at a time on the CPU).
    #[arg(long, default_value_t = 2)]
    pub(crate) workers: usize,
    /// Training rows of the generated data set (more rows = more optimizer steps per job).
    #[arg(long, default_value_t = 320)]
    pub(crate) train_rows: usize,
    /// Inits of the grid (default: all five, in the study's order).
    #[arg(long, value_delimiter = ',', default_values_t = LoraInit::ALL.map(|i| i.name().to_string()))]
    pub(crate) inits: Vec<String>,
    /// Learning rates of the grid (default: the study's seven).
    #[arg(long, value_delimiter = ',', default_values_t = STUDY_LRS)]
    pub(crate) lrs: Vec<f64>,
    /// Run the synthetic trainer instead of candle (orchestration only, no model).
    #[arg(long)]
    pub(crate) synthetic: bool,
    /// Where the dashboard listens while the demo runs (port 0: any free port; the URL is
    /// printed). Loopback only: the demo configures no tokens.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) http: std::net::SocketAddr,
}

/// Block length of the demo: short enough for a CPU, long enough for attention to matter.
const DEMO_MAX_LENGTH: usize = 64;

/// The sweep file the demo submits; also written to `OUT/sweep.toml` as a worked example.
fn sweep_toml(model: &Path, data: &Path, args: &DemoArgs) -> String {
    let seeds: Vec<String> = (42..42 + args.seeds).map(|s| s.to_string()).collect();
    let inits: Vec<String> = args.inits.iter().map(|i| format!("{i:?}")).collect();
    let lrs: Vec<String> = args.lrs.iter().map(|lr| format!("{lr:e}")).collect();
    // A JSON string is a valid TOML basic string, escapes included.
    let quote = |p: &Path| serde_json::Value::String(p.display().to_string()).to_string();
    let (model, data) = (quote(model), quote(data));
    format!(
        r#"# Written by `lorasweep demo`: the study's grid on a tiny generated model.
name = "demo"

[model]
path = {model}
dtype = "f32"

[data]
path = {data}
max_length = {DEMO_MAX_LENGTH}

[lora]
r = 8
alpha = 16.0
dropout = 0.05

[train]
micro_batch = 4
grad_accum = 2
epochs = 1
eval_every = 8

[grid]
inits = [{}]
lrs = [{}]
seeds = [{}]
"#,
        inits.join(", "),
        lrs.join(", "),
        seeds.join(", ")
    )
}

/// Runs the demo.
pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.seeds >= 1, "--seeds must be at least 1");
    anyhow::ensure!(args.workers >= 1, "--workers must be at least 1");
    let started = Instant::now();
    let out = &args.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize().with_context(|| format!("resolving {}", out.display()))?;
    let (model_dir, data_dir) = (out.join("model"), out.join("data"));

    eprintln!("[1/5] generating a tiny Qwen2 model and chat data in {}", out.display());
    let summary = tiny::write_model(&model_dir, &TinyModelConfig::default())
        .with_context(|| format!("writing the tiny model into {}", model_dir.display()))?;
    tiny::write_data(&data_dir, 7, args.train_rows, (args.train_rows / 8).max(16))
        .with_context(|| format!("writing the tiny data into {}", data_dir.display()))?;
    eprintln!("      model: {} parameters, vocab {}", summary.params, summary.vocab_size);

    eprintln!("[2/5] starting a coordinator on {} and {} worker(s)", out.join("coordinator").display(), args.workers);
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding a local port")?;
    let url = format!("http://{}", listener.local_addr().context("reading the bound address")?);
    let config = lorasweep_coordinator::Config::new(out.join("coordinator"));
    lorasweep_coordinator::http::check_exposure(args.http, &config.tokens)?;
    let http =
        tokio::net::TcpListener::bind(args.http).await.with_context(|| format!("binding --http {}", args.http))?;
    eprintln!("      dashboard: http://{}/", http.local_addr().context("reading the dashboard address")?);
    let listeners =
        lorasweep_coordinator::Listeners { http: Some(http), ..lorasweep_coordinator::Listeners::grpc(listener) };
    tracker.spawn(lorasweep_coordinator::serve_on(listeners, config, shutdown.child_token()));
    for i in 0..args.workers {
        let worker_args = lorasweep_worker::WorkerArgs {
            name: Some(format!("demo-{i}")),
            device: "cpu".into(),
            trainer: if args.synthetic {
                lorasweep_worker::config::TrainerKind::Synthetic
            } else {
                lorasweep_worker::config::TrainerKind::Candle
            },
            synthetic_step_ms: 5,
            max_backoff_ms: 200,
            metrics_listen: None,
            shutdown_grace: std::time::Duration::from_secs(5),
            exit_when_idle: None,
            gpu_memory_gb: None,
        };
        let config = lorasweep_worker::Config::new(&url, worker_args)?;
        tracker.spawn(lorasweep_worker::run(config, shutdown.child_token()));
    }
    tracker.close();

    let result = drive(&url, &out, &sweep_toml(&model_dir, &data_dir, &args)).await;
    shutdown.cancel();
    tracker.wait().await;
    let sweep = result?;
    eprintln!(
        "done in {:.0} s. Inspect it further with:\n  lorasweep --coordinator <url> results {sweep}\n(the database is {}/coordinator; start `lorasweep-coordinator --data-dir` on it to browse)",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// Submits the sweep, watches it, and writes the results. Returns the sweep id.
async fn drive(url: &str, out: &Path, toml: &str) -> anyhow::Result<String> {
    let sweep_path = out.join("sweep.toml");
    std::fs::write(&sweep_path, toml).with_context(|| format!("writing {}", sweep_path.display()))?;
    let mut client = client::connect(url).await?;
    let submitted = client
        .submit_sweep(pb::SubmitSweepRequest { sweep_toml: toml.to_string(), source: sweep_path.display().to_string() })
        .await
        .map_err(|s| client::call_error("submitting the demo sweep", s))?
        .into_inner();
    eprintln!("[3/5] sweep {} submitted: {} jobs", submitted.sweep_id, submitted.jobs);
    cmd_watch::watch(url, WatchArgs { sweep: submitted.sweep_id.clone() }).await?;

    eprintln!("[4/5] results");
    let fetched = cmd_results::fetch(&mut client, &submitted.sweep_id).await?;
    let results = cmd_results::tables(&fetched);
    print!("{}", results_render::render(&results, Format::Table, &fetched.name));
    let md = out.join("results.md");
    std::fs::write(&md, results_render::render(&results, Format::Markdown, &fetched.name))
        .with_context(|| format!("writing {}", md.display()))?;
    let json = out.join("results.json");
    std::fs::write(&json, results_render::render(&results, Format::Json, &fetched.name))
        .with_context(|| format!("writing {}", json.display()))?;

    eprintln!("[5/5] plots");
    let written = cmd_results::write_plots(&mut client, &fetched, None, out).await?;
    eprintln!("      wrote {}", md.display());
    eprintln!("      wrote {}", json.display());
    for p in written {
        eprintln!("      wrote {}", p.display());
    }
    Ok(submitted.sweep_id)
}
