//! A real one-host Slurm, started by the test (munged, slurmctld and slurmd on a configuration
//! in a temp dir; 4 fake GPUs as character devices; Slurm binds CUDA_VISIBLE_DEVICES per task),
//! running `lorasweep launch slurm`'s job array of 4 workers against a real coordinator process.
//! The workers run the candle trainer on the tiny model with `--device cpu`, under Slurm's GPU
//! binding. Mid-sweep one task is `scancel`led (its lease is released at once, not after the
//! 60 s TTL) and another `scontrol requeue`d (it checkpoints at the SIGTERM, and the job resumes
//! from that step). When the sweep is done every worker exits and every task ends COMPLETED
//! (the cancelled one CANCELLED); every curve is bit-identical to a fault-free run. A second
//! test runs the whole-node template (`launch slurm --tasks`: one job of 4 tasks, one GPU each)
//! with the synthetic trainer until the sweep is done and the job completes by itself.

use std::{
    collections::{BTreeSet, HashMap},
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use lorasweep_common::{Series, SweepSpec};
use lorasweep_proto::pb;
use lorasweep_train::CandleTrainer;

use crate::{
    docker::{BIN, repo, run, serial, wait_for},
    tiny,
};

/// The Slurm daemons of one test, stopped (with every job cancelled) on drop.
struct Slurm {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Slurm {
    fn start() -> anyhow::Result<Self> {
        for daemon in ["munged", "slurmctld", "slurmd", "sbatch", "scontrol", "mknod"] {
            if run("sh", &["-c", &format!("command -v {daemon}")]).is_err() {
                bail!(
                    "`{daemon}` is missing: this test needs Slurm and munge (Debian: apt-get install slurm-wlm munge; .ci/run installs them) and root"
                );
            }
        }
        let dir = tempfile::tempdir()?;
        let d = dir.path().to_path_buf();
        let d = d.as_path();
        for sub in ["state", "spool", "log", "munge", "dev"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        for i in 0..4 {
            run("mknod", &[&d.join(format!("dev/nvidia{i}")).display().to_string(), "c", "1", "3"])
                .context("fake GPUs must be character devices (mknod needs root)")?;
        }
        let key: Vec<u8> =
            (0..1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ std::process::id() as u8).collect();
        let key_file = d.join("munge/munge.key");
        std::fs::write(&key_file, key)?;
        std::fs::set_permissions(&key_file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let host = run("hostname", &["-s"])?;
        let (ctld_port, d_port) = (free_port()?, free_port()?);
        let p = |s: &str| d.join(s).display().to_string();
        let conf = format!(
            "ClusterName=lorasweep-test\nSlurmctldHost={host}\nSlurmUser=root\nSlurmdUser=root\n\
             SlurmctldPort={ctld_port}\nSlurmdPort={d_port}\nAuthType=auth/munge\nAuthInfo=socket={sock}\n\
             StateSaveLocation={state}\nSlurmdSpoolDir={spool}\nSlurmctldPidFile={cpid}\nSlurmdPidFile={dpid}\n\
             SlurmctldLogFile={clog}\nSlurmdLogFile={dlog}\nProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
             SchedulerType=sched/backfill\nSelectType=select/cons_tres\nSelectTypeParameters=CR_Core\nGresTypes=gpu\n\
             SlurmdParameters=config_overrides\nReturnToService=2\nMpiDefault=none\nJobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\nKillWait=30\nMinJobAge=600\n\
             NodeName={host} CPUs=8 Gres=gpu:4 State=UNKNOWN\nPartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP\n",
            sock = p("munge/munge.sock"),
            state = p("state"),
            spool = p("spool"),
            cpid = p("slurmctld.pid"),
            dpid = p("slurmd.pid"),
            clog = p("log/slurmctld.log"),
            dlog = p("log/slurmd.log"),
        );
        let conf_path = d.join("slurm.conf");
        std::fs::write(&conf_path, conf)?;
        std::fs::write(
            d.join("gres.conf"),
            format!("AutoDetect=off\nNodeName={host} Name=gpu File={}\n", p("dev/nvidia[0-3]")),
        )?;
        let slurm = Self { conf: conf_path, dir };
        run(
            "munged",
            &[
                "--force",
                &format!("--socket={}", p("munge/munge.sock")),
                &format!("--key-file={}", key_file.display()),
                &format!("--pid-file={}", p("munge/munged.pid")),
                &format!("--log-file={}", p("munge/munged.log")),
                &format!("--seed-file={}", p("munge/seed")),
            ],
        )?;
        let conf = slurm.conf.display().to_string();
        run("slurmctld", &["-f", &conf])?;
        run("slurmd", &["-f", &conf])?;
        wait_for("the Slurm node to be idle", Duration::from_secs(60), || {
            Ok(slurm.cmd("sinfo", &["-h", "-o", "%t"]).ok().filter(|s| s == "idle").map(|_| ()))
        })?;
        Ok(slurm)
    }

    fn cmd(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(program).args(args).env("SLURM_CONF", &self.conf).stdin(Stdio::null()).output()?;
        ensure!(out.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `JobState` of every task of array job `id`, by task index.
    fn task_states(&self, id: &str) -> anyhow::Result<HashMap<String, String>> {
        let text = self.cmd("scontrol", &["show", "job", "-o", id])?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let field = |k: &str| l.split_whitespace().find_map(|kv| kv.strip_prefix(k)).map(str::to_string);
                Some((field("ArrayTaskId=")?, field("JobState=")?))
            })
            .collect())
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = self.cmd("scancel", &["--full", "--quiet", "-u", "root"]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && self.cmd("squeue", &["-h"]).is_ok_and(|s| !s.is_empty()) {
            std::thread::sleep(Duration::from_millis(200));
        }
        for pid_file in ["slurmd.pid", "slurmctld.pid", "munge/munged.pid"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join(pid_file)) {
                let _ = run("kill", &[pid.trim()]);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A coordinator process; killed on drop.
struct Coordinator {
    child: Child,
    url: String,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn coordinator(data: &Path) -> anyhow::Result<Coordinator> {
    let mut child = Command::new(BIN)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--lease-ttl", "60s", "--data-dir"])
        .arg(data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line.trim().strip_prefix("listening on ").with_context(|| format!("coordinator said {line:?}"))?;
    Ok(Coordinator { url: format!("http://{addr}"), child })
}

fn cli_json(url: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut all = vec!["--coordinator", url];
    all.extend_from_slice(args);
    let text = run(BIN, &all)?;
    Ok(serde_json::from_str(&text)?)
}

fn sweep_toml(model: &str, data: &str) -> String {
    tiny::sweep_toml(
        "slurm",
        model,
        data,
        10,
        "inits = [\"standard\", \"ortho-eye\"]\nlrs = [1e-3, 5e-3, 1e-2]\nseeds = [9]",
    )
}

/// A running job: (job id, step, worker id).
fn running(url: &str, sweep: &str, min_step: u64) -> anyhow::Result<Vec<(String, u64, String)>> {
    let jobs = cli_json(url, &["jobs", sweep, "--json"])?;
    Ok(jobs
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| j["state"] == "running" && j["step"].as_u64().unwrap_or(0) >= min_step)
        .map(|j| {
            (
                j["id"].as_str().unwrap_or_default().to_string(),
                j["step"].as_u64().unwrap_or(0),
                j["worker"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Lines of the workers' Slurm logs containing every needle.
fn log_lines(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            out.extend(text.lines().filter(|l| needles.iter().all(|n| l.contains(n))).map(str::to_string));
        }
    }
    out
}

/// `step=N` in a log line.
fn step_of(line: &str) -> Option<u64> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix("step=")?.parse().ok())
}

#[test]
#[ignore = "needs root, slurm-wlm and munge: cargo test --workspace --test engine -- --ignored (.ci/run runs it)"]
fn a_slurm_array_binds_gpus_releases_on_scancel_resumes_after_requeue_and_completes() -> anyhow::Result<()> {
    let _serial = serial();
    let slurm = Slurm::start()?;
    let work = tempfile::tempdir()?;
    let coord = coordinator(&work.path().join("data"))?;
    let url = coord.url.as_str();
    let fixtures = repo().join("train/tests/fixtures");
    let (model, data) =
        (fixtures.join("tiny-qwen2").display().to_string(), fixtures.join("tiny-data").display().to_string());
    let file = work.path().join("sweep.toml");
    std::fs::write(&file, sweep_toml(&model, &data))?;
    let sweep = run(BIN, &["--coordinator", url, "submit", &file.display().to_string()])?;

    let logs = work.path().join("logs");
    let worker_bin = Path::new(BIN).with_file_name("lorasweep-worker");
    let launch = Command::new(BIN)
        .args(["--coordinator", url, "launch", "slurm", "--gpus", "4", "--device", "cpu", "--cpus-per-worker", "1"])
        .args(["--exit-when-idle", "4s", "--shutdown-grace", "20s", "--signal-lead", "60", "--hf-home"])
        .arg(work.path().join("hf"))
        .arg("--log-dir")
        .arg(&logs)
        .arg("--worker")
        .arg(&worker_bin)
        .args(["--worker-args", "--trainer candle --max-backoff-ms 200"])
        .env("SLURM_CONF", &slurm.conf)
        .output()?;
    ensure!(launch.status.success(), "launch slurm: {}", String::from_utf8_lossy(&launch.stderr));
    let array = String::from_utf8_lossy(&launch.stdout).trim().to_string();

    // Each worker sees the GPU Slurm bound to it, and says so at registration.
    let workers = wait_for("4 workers to register", Duration::from_secs(60), || {
        let w = cli_json(url, &["workers", "--json"])?;
        Ok((w.as_array().map_or(0, Vec::len) == 4).then_some(w))
    })?;
    let visible: BTreeSet<String> = workers
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| w["visible_devices"].as_str().unwrap_or("?").to_string())
        .collect();
    ensure!(visible == ["0", "1", "2", "3"].map(String::from).into(), "CUDA_VISIBLE_DEVICES per worker: {visible:?}");
    let task_of = |worker_id: &str| -> anyhow::Result<String> {
        let w = cli_json(url, &["workers", "--json"])?;
        let name = w
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["id"] == worker_id)
            .and_then(|w| w["name"].as_str())
            .with_context(|| format!("worker {worker_id} not listed"))?
            .to_string();
        name.rsplit_once("/slurm-").map(|(_, t)| t.to_string()).with_context(|| format!("worker name {name}"))
    };

    // scancel one task mid-job: its worker releases the lease at once.
    let (cancelled_job, _, w) = wait_for("a running job past step 3", Duration::from_secs(120), || {
        Ok(running(url, &sweep, 3)?.into_iter().next())
    })?;
    let cancelled_task = task_of(&w)?;
    let t0 = Instant::now();
    slurm.cmd("scancel", &[&cancelled_task])?;
    let released = wait_for("the cancelled task's job to be given back", Duration::from_secs(40), || {
        let jobs = cli_json(url, &["jobs", &sweep, "--json"])?;
        let j = jobs.as_array().into_iter().flatten().find(|j| j["id"] == cancelled_job.as_str()).cloned();
        Ok(j.filter(|j| j["state"] != "running" || j["attempt"].as_u64().unwrap_or(0) >= 2).map(|_| t0.elapsed()))
    })?;

    // scontrol requeue another mid-job: it checkpoints at the SIGTERM; the job resumes there.
    let (requeued_job, _, w) = wait_for("another running job past step 3", Duration::from_secs(120), || {
        Ok(running(url, &sweep, 3)?.into_iter().find(|(j, _, _)| *j != cancelled_job))
    })?;
    let requeued_task = task_of(&w)?;
    slurm.cmd("scontrol", &["requeue", &requeued_task])?;
    // Slurm holds a requeued job back for a while (reason BeginTime); start it now instead of
    // making the test wait that out.
    let index = requeued_task.rsplit('_').next().unwrap_or_default().to_string();
    wait_for("the requeued task to be pending", Duration::from_secs(60), || {
        Ok((slurm.task_states(&array)?.get(&index).map(String::as_str) == Some("PENDING")).then_some(()))
    })?;
    slurm.cmd("scontrol", &["update", &format!("JobId={requeued_task}"), "StartTime=now"])?;

    let finished = wait_for("the sweep to finish", Duration::from_secs(400), || {
        let s = cli_json(url, &["status", &sweep, "--json"])?;
        Ok((s["finished"] == true).then_some(s))
    })?;
    ensure!(finished["counts"]["succeeded"].as_u64() == Some(6), "the sweep ended with {}", finished["counts"]);
    // Every worker exits by itself (--exit-when-idle) and every task ends.
    let mut last = HashMap::new();
    let states = wait_for("every Slurm task to end", Duration::from_secs(90), || {
        last = slurm.task_states(&array)?;
        Ok((last.len() == 4 && last.values().all(|s| s == "COMPLETED" || s == "CANCELLED")).then(|| last.clone()))
    })
    .with_context(|| {
        format!("task states: {last:?}; squeue: {:?}", slurm.cmd("squeue", &["-h"]).unwrap_or_default())
    })?;
    let cancelled_index = cancelled_task.rsplit('_').next().unwrap_or_default().to_string();
    for (task, state) in &states {
        let want = if *task == cancelled_index { "CANCELLED" } else { "COMPLETED" };
        ensure!(state == want, "task {task} ended {state}, expected {want} ({states:?})");
    }

    let stopped = log_lines(&logs, &["stopping at a step boundary after a checkpoint", &requeued_job]);
    let sigterm_step =
        stopped.first().and_then(|l| step_of(l)).context("the requeued worker logged no SIGTERM checkpoint")?;
    let resumed = log_lines(&logs, &["resuming from checkpoint", &requeued_job]);
    let resumed_step =
        resumed.iter().filter_map(|l| step_of(l)).max().context("the requeued job never resumed from a checkpoint")?;
    ensure!(
        resumed_step == sigterm_step,
        "resumed from step {resumed_step}, the SIGTERM checkpoint was step {sigterm_step}"
    );
    let periodic = sigterm_step / 10 * 10;
    eprintln!(
        "slurm timeline: scancel {cancelled_task} → job {cancelled_job} given back after {:.2} s (lease TTL 60 s)",
        released.as_secs_f64()
    );
    eprintln!(
        "slurm: scontrol requeue {requeued_task} → SIGTERM checkpoint at step {sigterm_step} (last periodic: {periodic}, {} steps saved) → resumed from step {resumed_step}",
        sigterm_step - periodic
    );
    eprintln!("slurm: task states at the end: {states:?}");

    // Every stored curve equals the fault-free run, bit for bit.
    let jobs = cli_json(url, &["jobs", &sweep, "--json"])?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut compared = 0;
    let mut trainer = CandleTrainer::new("cpu")?;
    for spec in SweepSpec::parse(&sweep_toml(&model, &data), "slurm.toml")?.jobs() {
        let id = jobs
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| {
                j["init"] == spec.init.to_string() && j["lr"].as_f64().map(f64::to_bits) == Some(spec.lr.to_bits())
            })
            .and_then(|j| j["id"].as_str())
            .with_context(|| format!("no job for {} {}", spec.init, spec.lr))?
            .to_string();
        let (points, _) = tiny::reference(&mut trainer, &spec)?;
        // Through gRPC: the f64s as stored (a JSON round trip may move the last bit).
        let curve = rt.block_on(async {
            let mut sweeps = pb::sweeps_client::SweepsClient::connect(url.to_string()).await?;
            anyhow::Ok(crate::curve::read_curve(&mut sweeps, &id.clone()).await?)
        })?;
        for (series, steps, losses) in [
            (Series::Train, &curve.train_steps, &curve.train_losses),
            (Series::Eval, &curve.eval_steps, &curve.eval_losses),
        ] {
            let want: Vec<(u64, u64)> =
                points.iter().filter(|p| p.series == series).map(|p| (p.step, p.loss.to_bits())).collect();
            let got: Vec<(u64, u64)> = steps.iter().zip(losses).map(|(s, l)| (*s, l.to_bits())).collect();
            ensure!(
                got == want,
                "job {id} ({} {}, {series:?}): the stored curve differs from the fault-free run",
                spec.init,
                spec.lr
            );
        }
        compared += 1;
    }
    eprintln!(
        "slurm: {compared} curves bit-identical to the fault-free run (the scancelled and the requeued job among them)"
    );
    drop(coord);
    drop(slurm);
    Ok(())
}

#[test]
#[ignore = "needs root, slurm-wlm and munge: cargo test --workspace --test engine -- --ignored (.ci/run runs it)"]
fn a_multi_task_slurm_job_binds_a_gpu_per_task_and_ends_when_the_sweep_is_done() -> anyhow::Result<()> {
    let _serial = serial();
    let slurm = Slurm::start()?;
    let work = tempfile::tempdir()?;
    let coord = coordinator(&work.path().join("data"))?;
    let url = coord.url.as_str();
    let file = work.path().join("sweep.toml");
    std::fs::write(
        &file,
        "name = \"slurm-tasks\"\n[train]\nmax_steps = 30\n\
         [grid]\ninits = [\"standard\", \"reversed\"]\nlrs = [1e-4, 1e-3, 1e-2]\nseeds = [1, 2]\n",
    )?;
    let sweep = run(BIN, &["--coordinator", url, "submit", &file.display().to_string()])?;
    let logs = work.path().join("logs");
    let worker_bin = Path::new(BIN).with_file_name("lorasweep-worker");
    // `--tasks`: one job of 4 tasks (`srun -n 4 --gpus-per-task=1`), the whole-node template.
    let launch = Command::new(BIN)
        .args(["--coordinator", url, "launch", "slurm", "--gpus", "4", "--tasks", "--device", "cpu"])
        .args(["--cpus-per-worker", "1", "--exit-when-idle", "3s", "--shutdown-grace", "10s", "--hf-home"])
        .arg(work.path().join("hf"))
        .arg("--log-dir")
        .arg(&logs)
        .arg("--worker")
        .arg(&worker_bin)
        .args(["--worker-args", "--trainer synthetic --synthetic-step-ms 30 --max-backoff-ms 200"])
        .env("SLURM_CONF", &slurm.conf)
        .output()?;
    ensure!(launch.status.success(), "launch slurm --tasks: {}", String::from_utf8_lossy(&launch.stderr));
    let job = String::from_utf8_lossy(&launch.stdout).trim().to_string();

    let workers = wait_for("4 tasks to register", Duration::from_secs(60), || {
        let w = cli_json(url, &["workers", "--json"])?;
        Ok((w.as_array().map_or(0, Vec::len) == 4).then_some(w))
    })?;
    let (mut visible, mut ranks) = (BTreeSet::new(), BTreeSet::new());
    for w in workers.as_array().into_iter().flatten() {
        visible.insert(w["visible_devices"].as_str().unwrap_or("?").to_string());
        let name = w["name"].as_str().unwrap_or_default();
        let rank = name.rsplit_once(&format!("/slurm-{job}.")).map(|(_, r)| r.to_string());
        ranks.insert(rank.with_context(|| format!("worker name {name:?} does not name job {job} and a rank"))?);
    }
    ensure!(visible == ["0", "1", "2", "3"].map(String::from).into(), "CUDA_VISIBLE_DEVICES per task: {visible:?}");
    ensure!(ranks == ["0", "1", "2", "3"].map(String::from).into(), "task ranks: {ranks:?}");

    let finished = wait_for("the sweep to finish", Duration::from_secs(120), || {
        let s = cli_json(url, &["status", &sweep, "--json"])?;
        Ok((s["finished"] == true).then_some(s))
    })?;
    let c = &finished["counts"];
    let ended = c["succeeded"].as_u64().unwrap_or(0) + c["diverged"].as_u64().unwrap_or(0);
    ensure!(ended == 12, "the sweep ended with {c}");
    let jobs = cli_json(url, &["jobs", &sweep, "--json"])?;
    let ran_on: BTreeSet<&str> = jobs.as_array().into_iter().flatten().filter_map(|j| j["worker"].as_str()).collect();
    ensure!(ran_on.len() >= 2, "the tasks shared the sweep: {ran_on:?}");
    // Idle workers exit 0 (--exit-when-idle), so the one Slurm job ends COMPLETED by itself.
    let mut state = String::new();
    wait_for("the Slurm job to end", Duration::from_secs(60), || {
        let text = slurm.cmd("scontrol", &["show", "job", "-o", &job])?;
        state = text.split_whitespace().find_map(|kv| kv.strip_prefix("JobState=")).unwrap_or_default().to_string();
        Ok((state != "RUNNING" && state != "PENDING" && !state.is_empty()).then_some(()))
    })
    .with_context(|| format!("job {job} state {state}"))?;
    ensure!(state == "COMPLETED", "job {job} ended {state}");
    eprintln!(
        "slurm --tasks: 4 tasks on GPUs {visible:?}, {ended} jobs over {} workers, job {job} {state}",
        ran_on.len()
    );
    Ok(())
}
