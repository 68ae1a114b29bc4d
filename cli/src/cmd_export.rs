//! `lorasweep export SWEEP --format csv|parquet --out DIR`: every loss point of a sweep, one row
//! per (job, series, step) with the job's grid cell and outcome, for pandas, polars or a
//! spreadsheet. Parquet is one file (`<sweep>.parquet`, uncompressed, one row group per job);
//! CSV is `<sweep>.csv` with the same columns. TensorBoard event files are not built yet.

use std::{fs::File, io::Write as _, path::PathBuf, sync::Arc};

use anyhow::{Context, bail};
use lorasweep_common::JobState;
use lorasweep_proto::pb;
use parquet::{
    data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type},
    file::{properties::WriterProperties, writer::SerializedFileWriter},
    schema::parser::parse_message_type,
};

use crate::client;

/// Export formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ExportFormat {
    /// One CSV file.
    Csv,
    /// One Parquet file.
    Parquet,
    /// TensorBoard event files (not built yet: refused with a message).
    Tensorboard,
}

/// Arguments of `lorasweep export`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// The sweep.
    pub(crate) sweep: String,
    /// What to write.
    #[arg(long, value_enum)]
    pub(crate) format: ExportFormat,
    /// Directory to write into (created if missing).
    #[arg(long)]
    pub(crate) out: PathBuf,
}

/// The columns, in order (also the CSV header).
pub(crate) const COLUMNS: [&str; 11] =
    ["sweep_id", "job_id", "init", "lr", "seed", "state", "final_eval_loss", "attempt", "series", "step", "loss"];

const SCHEMA: &str = "message lorasweep_points {
    REQUIRED BYTE_ARRAY sweep_id (UTF8);
    REQUIRED BYTE_ARRAY job_id (UTF8);
    REQUIRED BYTE_ARRAY init (UTF8);
    REQUIRED DOUBLE lr;
    REQUIRED INT64 seed;
    REQUIRED BYTE_ARRAY state (UTF8);
    OPTIONAL DOUBLE final_eval_loss;
    REQUIRED INT64 attempt;
    REQUIRED BYTE_ARRAY series (UTF8);
    REQUIRED INT64 step;
    REQUIRED DOUBLE loss;
}";

/// One job's rows: (series, step, loss) with the job's columns.
struct JobRows {
    job: pb::Job,
    state: &'static str,
    points: Vec<(&'static str, u64, f64)>,
}

/// `lorasweep export`.
pub(crate) async fn run(url: &str, args: ExportArgs) -> anyhow::Result<()> {
    if args.format == ExportFormat::Tensorboard {
        bail!("--format tensorboard is not built yet; use --format parquet or csv (issue: TensorBoard export)");
    }
    let mut c = client::connect(url).await?;
    let jobs = client::all_jobs(&mut c, &args.sweep, 0).await?;
    if jobs.is_empty() {
        bail!("sweep {} has no jobs", args.sweep);
    }
    let mut rows = Vec::with_capacity(jobs.len());
    for job in jobs {
        let curve = client::curve(&mut c, &job.id).await?;
        let state = JobState::from_wire(job.state, "job.state")?.map_or("unspecified", JobState::name);
        let mut points: Vec<(&'static str, u64, f64)> =
            curve.train_steps.iter().zip(&curve.train_losses).map(|(s, l)| ("train", *s, *l)).collect();
        points.extend(curve.eval_steps.iter().zip(&curve.eval_losses).map(|(s, l)| ("eval", *s, *l)));
        rows.push(JobRows { job, state, points });
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let path = match args.format {
        ExportFormat::Csv => write_csv(&rows, &args.out.join(format!("{}.csv", args.sweep)))?,
        ExportFormat::Parquet => write_parquet(&rows, &args.out.join(format!("{}.parquet", args.sweep)))?,
        ExportFormat::Tensorboard => unreachable!("refused above"),
    };
    let n: usize = rows.iter().map(|r| r.points.len()).sum();
    println!("{} ({n} rows, {} jobs)", path.display(), rows.len());
    Ok(())
}

fn write_csv(rows: &[JobRows], path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    writeln!(w, "{}", COLUMNS.join(","))?;
    for r in rows {
        let j = &r.job;
        let eval = j.final_eval_loss.map_or(String::new(), |v| format!("{v:?}"));
        for (series, step, loss) in &r.points {
            // Ids, inits, states and series never hold commas or quotes.
            writeln!(
                w,
                "{},{},{},{:?},{},{},{eval},{},{series},{step},{loss:?}",
                j.sweep_id, j.id, j.init, j.lr, j.seed, r.state, j.attempt
            )?;
        }
    }
    w.flush().with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

fn write_parquet(rows: &[JobRows], path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let schema = Arc::new(parse_message_type(SCHEMA).context("the export schema")?);
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build()))?;
    for r in rows.iter().filter(|r| !r.points.is_empty()) {
        let j = &r.job;
        let n = r.points.len();
        let text = |s: &str| vec![ByteArray::from(s); n];
        let mut group = writer.next_row_group()?;
        let mut col = 0;
        while let Some(mut column) = group.next_column()? {
            match COLUMNS[col] {
                "sweep_id" => column.typed::<ByteArrayType>().write_batch(&text(&j.sweep_id), None, None)?,
                "job_id" => column.typed::<ByteArrayType>().write_batch(&text(&j.id), None, None)?,
                "init" => column.typed::<ByteArrayType>().write_batch(&text(&j.init), None, None)?,
                "lr" => column.typed::<DoubleType>().write_batch(&vec![j.lr; n], None, None)?,
                "seed" => column.typed::<Int64Type>().write_batch(&vec![j.seed as i64; n], None, None)?,
                "state" => column.typed::<ByteArrayType>().write_batch(&text(r.state), None, None)?,
                "final_eval_loss" => {
                    let (values, defined): (Vec<f64>, i16) = match j.final_eval_loss {
                        Some(v) => (vec![v; n], 1),
                        None => (Vec::new(), 0),
                    };
                    column.typed::<DoubleType>().write_batch(&values, Some(&vec![defined; n]), None)?
                }
                "attempt" => column.typed::<Int64Type>().write_batch(&vec![i64::from(j.attempt); n], None, None)?,
                "series" => {
                    let v: Vec<ByteArray> = r.points.iter().map(|p| ByteArray::from(p.0)).collect();
                    column.typed::<ByteArrayType>().write_batch(&v, None, None)?
                }
                "step" => {
                    let v: Vec<i64> = r.points.iter().map(|p| p.1 as i64).collect();
                    column.typed::<Int64Type>().write_batch(&v, None, None)?
                }
                _ => {
                    let v: Vec<f64> = r.points.iter().map(|p| p.2).collect();
                    column.typed::<DoubleType>().write_batch(&v, None, None)?
                }
            };
            column.close()?;
            col += 1;
        }
        group.close()?;
    }
    writer.close().with_context(|| format!("finishing {}", path.display()))?;
    Ok(path.to_path_buf())
}
