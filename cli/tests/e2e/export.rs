//! `lorasweep export`: the CSV and Parquet files hold exactly the stored points (read back with
//! the parquet crate's own reader), and the unbuilt TensorBoard format is refused by name.

use std::{collections::BTreeMap, time::Duration};

use parquet::{
    file::reader::{FileReader, SerializedFileReader},
    record::Field,
};

use crate::helpers::{await_sweep_done, cli, cli_ok, clients, spawn_coordinator, spawn_worker};

type Points = BTreeMap<(String, String, u64), f64>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_and_parquet_exports_hold_the_stored_points() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let coordinator = spawn_coordinator(&dir.path().join("data"), Duration::from_secs(5)).await?;
    let url = coordinator.url.clone();
    let file = dir.path().join("small.toml");
    std::fs::write(
        &file,
        "name = \"small\"\n[train]\nmax_steps = 12\n[grid]\ninits = [\"standard\", \"reversed\"]\nlrs = [2e-4]\nseeds = [42]\n",
    )?;
    let sweep = cli_ok(&url, &["submit", file.to_str().expect("utf-8 path")]).await?.trim().to_string();
    let worker = spawn_worker(&url, "solo", 1)?;
    let (mut sweeps, _) = clients(&url).await?;
    await_sweep_done(&sweeps, &sweep, Duration::from_secs(30)).await?;

    // What the coordinator stores, through GetCurve.
    let mut stored = Points::new();
    for job in crate::helpers::jobs(&mut sweeps, &sweep).await? {
        let c = crate::curve::read_curve(&mut sweeps, &job.id).await?;
        for (s, l) in c.train_steps.iter().zip(&c.train_losses) {
            stored.insert((job.id.clone(), "train".into(), *s), *l);
        }
        for (s, l) in c.eval_steps.iter().zip(&c.eval_losses) {
            stored.insert((job.id.clone(), "eval".into(), *s), *l);
        }
    }
    assert!(stored.len() > 20, "{} points", stored.len());

    let out = dir.path().join("export");
    let out_s = out.to_str().expect("utf-8 path");
    cli_ok(&url, &["export", &sweep, "--format", "csv", "--out", out_s]).await?;
    let csv = std::fs::read_to_string(out.join(format!("{sweep}.csv")))?;
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("sweep_id,job_id,init,lr,seed,state,final_eval_loss,attempt,series,step,loss"));
    let mut from_csv = Points::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 11, "{line}");
        assert_eq!((f[0], f[5], f[4]), (sweep.as_str(), "succeeded", "42"), "{line}");
        from_csv.insert((f[1].into(), f[8].into(), f[9].parse()?), f[10].parse()?);
    }
    assert_eq!(from_csv, stored, "the CSV holds exactly the stored points");

    cli_ok(&url, &["export", &sweep, "--format", "parquet", "--out", out_s]).await?;
    let reader = SerializedFileReader::new(std::fs::File::open(out.join(format!("{sweep}.parquet")))?)?;
    let mut from_parquet = Points::new();
    for row in reader.get_row_iter(None)? {
        let row = row?;
        let mut cols: BTreeMap<String, Field> = BTreeMap::new();
        for (name, field) in row.get_column_iter() {
            cols.insert(name.clone(), field.clone());
        }
        let text = |k: &str| match &cols[k] {
            Field::Str(s) => s.clone(),
            other => panic!("{k}: {other:?}"),
        };
        let (Field::Long(step), Field::Double(loss)) = (&cols["step"], &cols["loss"]) else {
            panic!("step/loss types: {cols:?}")
        };
        assert!(matches!(cols["final_eval_loss"], Field::Double(v) if v.is_finite()), "{cols:?}");
        assert_eq!(text("state"), "succeeded");
        from_parquet.insert((text("job_id"), text("series"), *step as u64), *loss);
    }
    assert_eq!(from_parquet, stored, "the Parquet file holds exactly the stored points");

    let refused = cli(&url, &["export", &sweep, "--format", "tensorboard", "--out", out_s]).await?;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not built yet"), "{refused:?}");
    let missing = cli(&url, &["export", "no-such-sweep", "--format", "csv", "--out", out_s]).await?;
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("no-such-sweep"));
    worker.stop().await?;
    coordinator.stop().await?;
    Ok(())
}
