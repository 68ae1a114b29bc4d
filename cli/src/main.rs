//! `lorasweep`: the command-line client. Each subcommand lives in its own module; `main` only
//! parses arguments, sets up tracing and dispatches.

mod bench_checkpoint;
mod bench_coordinator;
mod bench_dashboard;
mod bench_logs;
mod bench_switch;
mod client;
mod cmd_adapter;
mod cmd_bench_train;
mod cmd_demo;
mod cmd_export;
mod cmd_generate;
mod cmd_health;
mod cmd_jobs;
mod cmd_launch;
mod cmd_results;
mod cmd_serve;
mod cmd_sweeps;
mod cmd_tiny;
mod cmd_train;
mod cmd_watch;
mod output;
mod results_render;
mod shape_model;

use clap::{Parser, Subcommand};

/// Training (`train`, `demo`, `bench train`) frees and reallocates activation-sized buffers every
/// op; glibc hands large ones back to the kernel and page-faults them in again each time.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Run and analyse LoRA-initialisation sweeps.
#[derive(Debug, Parser)]
#[command(name = "lorasweep", version, about)]
struct Cli {
    /// The coordinator's gRPC address.
    #[arg(long, global = true, env = "LORASWEEP_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    coordinator: String,
    /// Bearer token and TLS CA for the coordinator (global: `--token-file`, `--tls-ca`).
    #[command(flatten)]
    connect: lorasweep_worker::ConnectArgs,
    /// CPU threads for training's matrix products (default: the CPUs this process may use, or
    /// RAYON_NUM_THREADS).
    #[arg(long, global = true, env = "LORASWEEP_THREADS")]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a sweep file; prints the new sweep's id.
    Submit(cmd_sweeps::SubmitArgs),
    /// Show a sweep's job counts, or list every sweep.
    Status(cmd_sweeps::StatusArgs),
    /// List a sweep's jobs.
    Jobs(cmd_jobs::JobsArgs),
    /// Show one job whole: its spec, every attempt (worker, device, outcome, error), artifacts.
    Job(cmd_jobs::JobArgs),
    /// Print what happened to a sweep or a job (leases, lost heartbeats, requeues, errors, …).
    Events(cmd_jobs::EventsArgs),
    /// Print the log records a job's workers shipped.
    Logs(cmd_jobs::LogsArgs),
    /// Print a job's loss curves.
    Curve(cmd_jobs::CurveArgs),
    /// Write a finished job's final adapter as a PEFT directory.
    Adapter(cmd_adapter::AdapterArgs),
    /// List registered workers.
    Workers(cmd_jobs::WorkersArgs),
    /// Follow a sweep with progress bars until it finishes.
    Watch(cmd_watch::WatchArgs),
    /// Cancel every queued or running job of a sweep.
    Cancel(cmd_sweeps::SweepArg),
    /// Requeue every failed or cancelled job of a sweep.
    Retry(cmd_sweeps::SweepArg),
    /// Continue a sweep that fail-fast paused, after fixing the cause (requeues its failed jobs).
    Resume(cmd_sweeps::SweepArg),
    /// Print the study's two tables (final eval loss per lr × init, and relative to Standard).
    Results(cmd_results::ResultsArgs),
    /// Write the study's plots (PNG and SVG) for a sweep.
    Plot(cmd_results::PlotArgs),
    /// Every loss point of a sweep as one CSV or Parquet file (job columns + series, step, loss).
    Export(cmd_export::ExportArgs),
    /// Probe a coordinator (gRPC health) or a worker (`--http URL/healthz`); exit 0 if serving.
    Health(cmd_health::HealthArgs),
    /// Start workers on a cluster scheduler (`launch slurm`: writes and sbatches a script).
    Launch {
        #[command(subcommand)]
        which: cmd_launch::LaunchCommand,
    },
    /// Run the whole system locally on a tiny generated model: the README's first command.
    Demo(cmd_demo::DemoArgs),
    /// Run the coordinator (same flags as `lorasweep-coordinator`).
    #[command(hide = true)]
    Coordinator(lorasweep_coordinator::Cli),
    /// Run a worker daemon against `--coordinator` (same flags as `lorasweep-worker`).
    #[command(hide = true)]
    Worker(lorasweep_worker::WorkerArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Train one job locally, without a coordinator.
    Train(cmd_train::TrainArgs),
    /// Sample text from a base model with an adapter merged in.
    Generate(cmd_generate::GenerateArgs),
    /// Write a tiny random Qwen2 model (config, safetensors, tokenizer) for tests and the demo.
    MakeTinyModel(cmd_tiny::MakeTinyModelArgs),
    /// Write small synthetic data in the no_robots format.
    MakeTinyData(cmd_tiny::MakeTinyDataArgs),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Coordinator throughput with simulated workers over real gRPC.
    Coordinator(bench_coordinator::BenchCoordinatorArgs),
    /// One LoRA training step at a model shape: tokens/s, time split, peak RSS.
    Train(cmd_bench_train::BenchTrainArgs),
    /// The time a worker needs between two jobs: base model resident vs reloaded.
    JobSwitch(bench_switch::BenchSwitchArgs),
    /// Checkpoint size, serialise/upload/download/parse times through a real coordinator.
    Checkpoint(bench_checkpoint::BenchCheckpointArgs),
    /// What shipping a job's log records to the coordinator costs a tiny training step.
    LogShipping(bench_logs::BenchLogsArgs),
    /// What the web dashboard costs: page renders and open pages following a sweep.
    Dashboard(bench_dashboard::BenchDashboardArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // SAFETY: nothing has started a thread yet (no runtime, no candle op).
    #[allow(unsafe_code)]
    unsafe {
        lorasweep_train::cpu::configure(cli.threads);
    }
    // The daemons log their lifecycle; client commands stay quiet unless asked.
    let default_filter = match cli.command {
        Command::Coordinator(_) | Command::Worker(_) => "info",
        _ => "warn",
    };
    {
        use tracing_subscriber::{Layer, filter::LevelFilter, layer::SubscriberExt, util::SubscriberInitExt};
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
        // Daemon logs often go to files; colour codes only help on a terminal.
        let stderr = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter);
        // Workers (`worker`, and the demo's in-process ones) ship job-scoped records to the
        // coordinator for `lorasweep logs`, whatever RUST_LOG says for stderr.
        let ship = matches!(
            cli.command,
            Command::Worker(_) | Command::Demo(_) | Command::Bench { which: BenchCommand::LogShipping(_) }
        )
        .then(|| lorasweep_worker::logship::layer().with_filter(LevelFilter::INFO));
        tracing_subscriber::registry().with(stderr).with(ship).init();
    }
    client::configure(cli.connect.clone());
    let url = cli.coordinator.as_str();
    let rt = || tokio::runtime::Runtime::new().map_err(anyhow::Error::from);
    match cli.command {
        Command::Submit(args) => rt()?.block_on(cmd_sweeps::submit(url, args)),
        Command::Status(args) => rt()?.block_on(cmd_sweeps::status(url, args)),
        Command::Jobs(args) => rt()?.block_on(cmd_jobs::jobs(url, args)),
        Command::Job(args) => rt()?.block_on(cmd_jobs::job(url, args)),
        Command::Events(args) => rt()?.block_on(cmd_jobs::events(url, args)),
        Command::Logs(args) => rt()?.block_on(cmd_jobs::logs(url, args)),
        Command::Curve(args) => rt()?.block_on(cmd_jobs::curve(url, args)),
        Command::Adapter(args) => rt()?.block_on(cmd_adapter::run(url, args)),
        Command::Workers(args) => rt()?.block_on(cmd_jobs::workers(url, args)),
        Command::Watch(args) => rt()?.block_on(cmd_watch::watch(url, args)),
        Command::Cancel(args) => rt()?.block_on(cmd_sweeps::cancel(url, args)),
        Command::Retry(args) => rt()?.block_on(cmd_sweeps::retry(url, args)),
        Command::Resume(args) => rt()?.block_on(cmd_sweeps::resume(url, args)),
        Command::Results(args) => rt()?.block_on(cmd_results::results(url, args)),
        Command::Plot(args) => rt()?.block_on(cmd_results::plot(url, args)),
        Command::Export(args) => rt()?.block_on(cmd_export::run(url, args)),
        Command::Health(args) => rt()?.block_on(cmd_health::run(url, args)),
        Command::Launch { which } => cmd_launch::run(url, cli.connect.token_file.as_deref(), which),
        Command::Demo(args) => rt()?.block_on(cmd_demo::run(args)),
        Command::Coordinator(args) => rt()?.block_on(cmd_serve::coordinator(args)),
        Command::Worker(args) => {
            let code = rt()?.block_on(cmd_serve::worker(url, &cli.connect, args))?;
            if code != 0 {
                std::process::exit(code);
            }
            Ok(())
        }
        Command::Bench { which: BenchCommand::Coordinator(args) } => rt()?.block_on(bench_coordinator::run(url, args)),
        Command::Bench { which: BenchCommand::Train(args) } => cmd_bench_train::run(args),
        Command::Bench { which: BenchCommand::JobSwitch(args) } => bench_switch::run(args),
        Command::Bench { which: BenchCommand::Checkpoint(args) } => rt()?.block_on(bench_checkpoint::run(args)),
        Command::Bench { which: BenchCommand::LogShipping(args) } => rt()?.block_on(bench_logs::run(args)),
        Command::Bench { which: BenchCommand::Dashboard(args) } => rt()?.block_on(bench_dashboard::run(args)),
        Command::Train(args) => cmd_train::run(args),
        Command::Generate(args) => cmd_generate::run(args),
        Command::MakeTinyModel(args) => cmd_tiny::run_model(args),
        Command::MakeTinyData(args) => cmd_tiny::run_data(args),
    }
}
