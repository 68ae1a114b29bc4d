//! `lorasweep watch SWEEP`: follows a sweep's `WatchSweep` stream until the sweep is finished.
//!
//! On a terminal it draws indicatif bars: one for the whole sweep (finished/total with an ETA)
//! and one per running job (step/total and the last train loss). When stdout is not a terminal
//! (a log file, CI) it prints a plain line whenever the counts change, and at least every
//! [`PLAIN_EVERY`] while anything is running.

use std::{
    collections::HashMap,
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use lorasweep_proto::pb;
use tokio_stream::StreamExt;

use crate::{client, output};

/// The longest gap between plain progress lines, so a log shows the watch is alive.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// Arguments of `lorasweep watch`.
#[derive(Debug, clap::Args)]
pub(crate) struct WatchArgs {
    /// The sweep.
    pub(crate) sweep: String,
}

/// Follows the sweep until it finishes. A broken stream (the coordinator restarting, say) is
/// resumed by reconnecting for up to [`RECONNECT_FOR`]; the first connection must succeed.
pub(crate) async fn watch(url: &str, args: WatchArgs) -> anyhow::Result<()> {
    let mut client = client::connect(url).await?;
    let mut view: Box<dyn View> =
        if std::io::stdout().is_terminal() { Box::new(Bars::new()) } else { Box::new(Plain::default()) };
    let mut last: Option<pb::Sweep> = None;
    let mut outage: Option<Instant> = None;
    let mut wait = Duration::from_millis(100);
    loop {
        let broken = match follow(&mut client, &args.sweep, view.as_mut(), &mut last, &mut outage).await {
            Ok(()) if last.as_ref().is_some_and(output::is_finished) => break,
            Ok(()) => "the stream ended early".to_string(),
            Err(Follow::Fatal(e)) => {
                view.finish();
                return Err(e);
            }
            Err(Follow::Broken(why)) => why,
        };
        let since = *outage.get_or_insert_with(Instant::now);
        if since.elapsed() > RECONNECT_FOR {
            view.finish();
            anyhow::bail!("lost the coordinator at {url} while watching sweep {}: {broken}", args.sweep);
        }
        eprintln!("watch: {broken}; reconnecting to {url} in {wait:?}");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
        if let Ok(c) = client::connect(url).await {
            client = c;
        }
    }
    view.finish();
    let sweep = last.expect("the loop only ends on a finished snapshot");
    println!("sweep {} finished: {}", sweep.id, output::counts_line(&sweep));
    Ok(())
}

/// How long `watch` keeps reconnecting after the coordinator went away.
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Why following the stream stopped.
enum Follow {
    /// Retrying cannot help (unknown sweep, refused request).
    Fatal(anyhow::Error),
    /// The connection or stream broke; worth reconnecting.
    Broken(String),
}

/// Reads one `WatchSweep` stream to its end, rendering every snapshot.
async fn follow(
    client: &mut client::Client,
    sweep: &str,
    view: &mut dyn View,
    last: &mut Option<pb::Sweep>,
    outage: &mut Option<Instant>,
) -> Result<(), Follow> {
    let classify = |s: tonic::Status| match s.code() {
        tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::PermissionDenied => {
            Follow::Fatal(client::call_error(&format!("watching sweep {sweep}"), s))
        }
        _ => Follow::Broken(format!("{:?}: {}", s.code(), s.message())),
    };
    let mut stream =
        client.watch_sweep(pb::WatchSweepRequest { sweep_id: sweep.to_string() }).await.map_err(classify)?.into_inner();
    // A large sweep's snapshot spans several messages (`more`): shown once whole.
    let mut partial: Option<pb::WatchSweepResponse> = None;
    while let Some(item) = stream.next().await {
        let piece = item.map_err(classify)?;
        *outage = None;
        let more = piece.more;
        let snap = match partial.take() {
            Some(mut acc) => {
                acc.jobs.extend(piece.jobs);
                acc.sweep = piece.sweep.or(acc.sweep);
                acc
            }
            None => piece,
        };
        if more {
            partial = Some(snap);
            continue;
        }
        view.update(&snap);
        if let Some(s) = snap.sweep {
            let paused = (!s.paused.is_empty()).then(|| s.paused.clone());
            *last = Some(s);
            if let Some(reason) = paused {
                // Nothing moves until someone acts: say why and stop watching.
                return Err(Follow::Fatal(anyhow::anyhow!("sweep {sweep} is paused: {reason}")));
            }
        }
    }
    Ok(())
}

/// How the watch renders snapshots.
trait View {
    /// Shows a new snapshot.
    fn update(&mut self, snap: &pb::WatchSweepResponse);
    /// Tidies up at the end.
    fn finish(&mut self);
}

/// Finished jobs (any terminal state).
fn done(sweep: &pb::Sweep) -> u64 {
    let c = output::counts(sweep);
    u64::from(c["succeeded"] + c["diverged"] + c["failed"] + c["cancelled"])
}

/// indicatif bars for a terminal.
struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    jobs: HashMap<String, ProgressBar>,
    job_style: ProgressStyle,
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:40.cyan/blue}] {pos}/{len} jobs  ETA {eta}  {msg}")
                .expect("the template is valid")
                .progress_chars("=> "),
        );
        overall.set_prefix("sweep");
        let job_style = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} steps  {msg}")
            .expect("the template is valid")
            .progress_chars("=> ");
        Self { multi, overall, jobs: HashMap::new(), job_style }
    }
}

impl View for Bars {
    fn update(&mut self, snap: &pb::WatchSweepResponse) {
        let Some(sweep) = &snap.sweep else { return };
        self.overall.set_length(u64::from(sweep.total));
        self.overall.set_position(done(sweep));
        self.overall.set_message(output::counts_line(sweep));
        let running: Vec<&pb::Job> = snap.jobs.iter().filter(|j| j.state == pb::JobState::Running as i32).collect();
        self.jobs.retain(|id, bar| {
            let keep = running.iter().any(|j| &j.id == id);
            if !keep {
                bar.finish_and_clear();
            }
            keep
        });
        for job in running {
            let bar = self.jobs.entry(job.id.clone()).or_insert_with(|| {
                let bar = self.multi.add(ProgressBar::new(0));
                bar.set_style(self.job_style.clone());
                bar.set_prefix(job.worker.chars().take(12).collect::<String>());
                bar
            });
            bar.set_length(job.total_steps.max(job.step));
            bar.set_position(job.step);
            bar.set_message(format!(
                "{} lr={:e} seed={} loss={}",
                job.init,
                job.lr,
                job.seed,
                output::loss(job.last_train_loss)
            ));
        }
    }

    fn finish(&mut self) {
        for (_, bar) in self.jobs.drain() {
            bar.finish_and_clear();
        }
        self.overall.finish();
    }
}

/// Plain lines for logs.
#[derive(Default)]
struct Plain {
    last_line: String,
    last_print: Option<Instant>,
}

impl View for Plain {
    fn update(&mut self, snap: &pb::WatchSweepResponse) {
        let Some(sweep) = &snap.sweep else { return };
        let line = format!("{}/{} done  {}", done(sweep), sweep.total, output::counts_line(sweep));
        let stale = self.last_print.is_none_or(|t| t.elapsed() >= PLAIN_EVERY);
        if line != self.last_line || stale {
            println!("{line}");
            self.last_line = line;
            self.last_print = Some(Instant::now());
        }
    }

    fn finish(&mut self) {}
}
