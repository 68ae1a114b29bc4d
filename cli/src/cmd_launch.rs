//! `lorasweep launch slurm`: writes an sbatch script from the templates in `deploy/slurm/`
//! (compiled in) and submits it with `sbatch`, or prints it with `--dry-run`.
//!
//! The templates bind one GPU per worker (`--gres=gpu:N` per array task, or `--gpus-per-task`),
//! deliver SIGTERM to the worker itself before the time limit (`--signal=TERM@lead`, no `B:`),
//! and requeue a task whose worker exited 75 (a job interrupted, its checkpoint stored); workers
//! exit 0 with `--exit-when-idle` when the sweep is done, so allocations end with it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail, ensure};

const ARRAY_TEMPLATE: &str = include_str!("../../deploy/slurm/worker-array.sbatch");
const TASKS_TEMPLATE: &str = include_str!("../../deploy/slurm/worker-tasks.sbatch");

/// Arguments of `lorasweep launch`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum LaunchCommand {
    /// Workers as a Slurm job: an array of 1-GPU tasks (default) or one job of N tasks.
    Slurm(SlurmArgs),
}

/// Arguments of `lorasweep launch slurm`.
#[derive(Debug, clap::Args)]
pub(crate) struct SlurmArgs {
    /// Workers to start (one per GPU).
    #[arg(long)]
    gpus: u32,
    /// One job of N tasks (`-n N --gpus-per-task`), for whole nodes, instead of an array.
    #[arg(long, conflicts_with = "throttle")]
    tasks: bool,
    /// Array only: at most this many workers at a time (`--array=…%K`; default: all).
    #[arg(long)]
    throttle: Option<u32>,
    /// GPUs per worker.
    #[arg(long, default_value_t = 1)]
    gpus_per_worker: u32,
    /// CPU cores per worker (data loading and the optimizer run there).
    #[arg(long, default_value_t = 4)]
    cpus_per_worker: u32,
    /// `--partition`.
    #[arg(long)]
    partition: Option<String>,
    /// `--time` (Slurm's formats, e.g. `4:00:00`).
    #[arg(long)]
    time: Option<String>,
    /// `--account`.
    #[arg(long)]
    account: Option<String>,
    /// More `#SBATCH` options, each given whole (e.g. `--qos=high`); repeatable.
    #[arg(long = "sbatch-option", allow_hyphen_values = true)]
    sbatch_options: Vec<String>,
    /// Job name.
    #[arg(long, default_value = "lorasweep-worker")]
    job_name: String,
    /// The worker binary as the compute nodes see it (default: `lorasweep-worker` beside this
    /// `lorasweep`).
    #[arg(long)]
    worker: Option<PathBuf>,
    /// `--device` of the workers (`cuda`: the GPU Slurm bound, seen as device 0).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Seconds before the time limit at which workers get SIGTERM.
    #[arg(long, default_value_t = 120)]
    signal_lead: u32,
    /// `--shutdown-grace` of the workers; keep it under the signal lead plus Slurm's KillWait.
    #[arg(long, default_value = "90s")]
    shutdown_grace: String,
    /// `--exit-when-idle` of the workers: how long an empty queue keeps an allocation.
    #[arg(long, default_value = "10m")]
    exit_when_idle: String,
    /// Times a task requeues itself after an interrupted job (Slurm's own requeues on
    /// preemption do not count).
    #[arg(long, default_value_t = 5)]
    max_requeues: u32,
    /// HF_HOME on the compute nodes (the shared Hugging Face cache).
    #[arg(long, env = "HF_HOME", default_value = "$HOME/.cache/huggingface")]
    hf_home: String,
    /// Directory for the workers' logs (created).
    #[arg(long, default_value = "lorasweep-logs")]
    log_dir: PathBuf,
    /// More worker flags, as one string (e.g. `--trainer synthetic`).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    worker_args: String,
    /// Where to write the script (default: LOG_DIR/JOB_NAME.sbatch).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the script instead of submitting it.
    #[arg(long)]
    dry_run: bool,
}

/// Runs `lorasweep launch …`.
pub(crate) fn run(url: &str, token_file: Option<&Path>, command: LaunchCommand) -> anyhow::Result<()> {
    match command {
        LaunchCommand::Slurm(args) => slurm(url, token_file, args),
    }
}

fn slurm(url: &str, token_file: Option<&Path>, args: SlurmArgs) -> anyhow::Result<()> {
    let script = render(url, token_file, &args)?;
    if args.dry_run {
        print!("{script}");
        return Ok(());
    }
    std::fs::create_dir_all(&args.log_dir).with_context(|| format!("creating {}", args.log_dir.display()))?;
    let out = args.out.clone().unwrap_or_else(|| args.log_dir.join(format!("{}.sbatch", args.job_name)));
    std::fs::write(&out, &script).with_context(|| format!("writing {}", out.display()))?;
    let submitted = std::process::Command::new("sbatch")
        .arg("--parsable")
        .arg(&out)
        .output()
        .context("running sbatch (is Slurm's client installed and on PATH?)")?;
    ensure!(
        submitted.status.success(),
        "sbatch {} failed: {}",
        out.display(),
        String::from_utf8_lossy(&submitted.stderr).trim()
    );
    let id = String::from_utf8_lossy(&submitted.stdout).trim().to_string();
    eprintln!("submitted {} ({} workers) as Slurm job {id}; script: {}", args.job_name, args.gpus, out.display());
    println!("{id}");
    Ok(())
}

/// The sbatch script for `args`.
fn render(url: &str, token_file: Option<&Path>, args: &SlurmArgs) -> anyhow::Result<String> {
    ensure!(args.gpus >= 1, "--gpus must be at least 1");
    ensure!(
        args.gpus_per_worker >= 1 && args.cpus_per_worker >= 1,
        "--gpus-per-worker and --cpus-per-worker must be at least 1"
    );
    for (flag, value) in [("--shutdown-grace", &args.shutdown_grace), ("--exit-when-idle", &args.exit_when_idle)] {
        humantime::parse_duration(value).map_err(|e| anyhow::anyhow!("{flag} {value:?}: {e}"))?;
    }
    let grace = humantime::parse_duration(&args.shutdown_grace)?.as_secs();
    if grace >= u64::from(args.signal_lead) + 30 {
        bail!(
            "--shutdown-grace {} does not fit in --signal-lead {} s plus Slurm's default KillWait (30 s): the worker would be killed before it releases its lease",
            args.shutdown_grace,
            args.signal_lead
        );
    }
    let worker = match &args.worker {
        Some(w) => w.clone(),
        None => std::env::current_exe().context("locating this binary")?.with_file_name("lorasweep-worker"),
    };
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut extra: Vec<String> = Vec::new();
    for (opt, value) in [("partition", &args.partition), ("time", &args.time), ("account", &args.account)] {
        if let Some(v) = value {
            extra.push(format!("#SBATCH --{opt}={v}"));
        }
    }
    extra.extend(args.sbatch_options.iter().map(|o| format!("#SBATCH {o}")));
    let token = match token_file {
        Some(f) => format!("export LORASWEEP_TOKEN_FILE={}", shell_quote(&abs(f).display().to_string())),
        None => "# no --token-file: the coordinator must accept calls without a token".into(),
    };
    let template = if args.tasks { TASKS_TEMPLATE } else { ARRAY_TEMPLATE };
    let values = [
        ("JOB_NAME", args.job_name.clone()),
        ("WORKERS", args.gpus.to_string()),
        ("LAST_INDEX", (args.gpus - 1).to_string()),
        ("THROTTLE", args.throttle.unwrap_or(args.gpus).to_string()),
        ("GPUS_PER_WORKER", args.gpus_per_worker.to_string()),
        ("CPUS_PER_WORKER", args.cpus_per_worker.to_string()),
        ("SIGNAL_LEAD", args.signal_lead.to_string()),
        ("LOG_DIR", abs(&args.log_dir).display().to_string()),
        ("EXTRA_SBATCH", extra.join("\n")),
        // Not quoted: `$HOME` in the default must expand on the node.
        ("HF_HOME", args.hf_home.clone()),
        ("COORDINATOR", shell_quote(url)),
        ("TOKEN_EXPORT", token),
        ("WORKER", shell_quote(&abs(&worker).display().to_string())),
        ("DEVICE", shell_quote(&args.device)),
        ("EXIT_WHEN_IDLE", shell_quote(&args.exit_when_idle)),
        ("SHUTDOWN_GRACE", shell_quote(&args.shutdown_grace)),
        ("WORKER_ARGS", args.worker_args.clone()),
        ("MAX_REQUEUES", args.max_requeues.to_string()),
    ];
    let mut script = template.to_string();
    for (key, value) in values {
        script = script.replace(&format!("{{{{{key}}}}}"), &value);
    }
    if let Some(left) = script.split("{{").nth(1) {
        bail!("template placeholder left unfilled: {{{{{}", left.chars().take(30).collect::<String>());
    }
    Ok(script)
}

/// `value` in single quotes for a POSIX shell.
fn shell_quote(value: &str) -> String {
    if !value.is_empty() && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c)) {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        launch: LaunchCommand,
    }

    fn script(argv: &[&str]) -> anyhow::Result<String> {
        let LaunchCommand::Slurm(args) = Cli::try_parse_from([&["t", "slurm"], argv].concat())?.launch;
        render("http://coord:50051", Some(Path::new("/shared/worker.token")), &args)
    }

    #[test]
    fn the_array_script_binds_a_gpu_per_task_signals_the_worker_and_requeues() -> anyhow::Result<()> {
        let s = script(&[
            "--gpus",
            "6",
            "--throttle",
            "4",
            "--partition",
            "gpu",
            "--time",
            "4:00:00",
            "--worker",
            "/opt/w",
        ])?;
        for needle in [
            "#SBATCH --array=0-5%4",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --signal=TERM@120",
            "#SBATCH --requeue",
            "#SBATCH --partition=gpu",
            "#SBATCH --time=4:00:00",
            "export LORASWEEP_COORDINATOR=http://coord:50051",
            "export LORASWEEP_TOKEN_FILE=/shared/worker.token",
            "srun --kill-on-bad-exit=1 /opt/w --device cuda",
            "--exit-when-idle 10m --shutdown-grace 90s",
            r#"if [ "$rc" -eq 75 ]"#,
        ] {
            assert!(s.contains(needle), "missing {needle:?} in\n{s}");
        }
        assert!(!s.contains("{{"), "{s}");
        Ok(())
    }

    #[test]
    fn the_tasks_script_and_refusals() -> anyhow::Result<()> {
        let s = script(&["--gpus", "8", "--tasks", "--worker", "/opt/w", "--sbatch-option", "--qos=high"])?;
        assert!(s.contains("#SBATCH --ntasks=8") && s.contains("#SBATCH --gpus-per-task=1"), "{s}");
        assert!(s.contains("#SBATCH --qos=high") && !s.contains("--array"), "{s}");
        let err = script(&["--gpus", "2", "--shutdown-grace", "10m"]).unwrap_err().to_string();
        assert!(err.contains("--shutdown-grace") && err.contains("KillWait"), "{err}");
        let err = script(&["--gpus", "2", "--exit-when-idle", "soon"]).unwrap_err().to_string();
        assert!(err.contains("--exit-when-idle"), "{err}");
        assert!(script(&["--gpus", "0"]).is_err());
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        Ok(())
    }
}
