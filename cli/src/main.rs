//! `lorasweep`: the command-line client. Each subcommand lives in its own module; `main` only
//! parses arguments, sets up tracing and dispatches.

mod bench_coordinator;
mod cmd_bench_train;
mod cmd_tiny;
mod cmd_train;

use clap::{Parser, Subcommand};

/// Run and analyse LoRA-initialisation sweeps.
#[derive(Debug, Parser)]
#[command(name = "lorasweep", version, about)]
struct Cli {
    /// The coordinator's gRPC address.
    #[arg(long, global = true, env = "LORASWEEP_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    coordinator: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Train one job locally, without a coordinator.
    Train(cmd_train::TrainArgs),
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Bench { which: BenchCommand::Coordinator(args) } => {
            tokio::runtime::Runtime::new()?.block_on(bench_coordinator::run(&cli.coordinator, args))
        }
        Command::Bench { which: BenchCommand::Train(args) } => cmd_bench_train::run(args),
        Command::Train(args) => cmd_train::run(args),
        Command::MakeTinyModel(args) => cmd_tiny::run_model(args),
        Command::MakeTinyData(args) => cmd_tiny::run_data(args),
    }
}
