//! Sharing a mixed cluster: a worker leases only jobs of sweeps whose `[requirements]` it meets,
//! higher `priority` first, and sweeps of equal priority share the workers (fewest running
//! jobs first, then the one leased least recently) instead of the oldest sweep holding every worker until it
//! is done. A sweep no live worker can run says so in GetSweep.

use std::collections::HashMap;

use lorasweep_proto::pb;

use crate::helpers::{TestCoordinator, spawn_coordinator};

/// `n` × 4 one-step jobs named `name`, with extra top-level lines.
fn sweep(name: &str, lrs: usize, extra: &str) -> String {
    let lrs: Vec<String> = (1..=lrs).map(|i| format!("{i}e-3")).collect();
    format!(
        "name = \"{name}\"\n{extra}\n[train]\nmax_steps = 1\n[grid]\ninits = [\"standard\"]\nlrs = [{}]\nseeds = [1, 2, 3, 4]\n",
        lrs.join(", ")
    )
}

async fn worker(c: &mut TestCoordinator, name: &str, device: &str, gpu_gb: u64) -> anyhow::Result<String> {
    let req = pb::RegisterWorkerRequest {
        name: name.into(),
        device: device.into(),
        trainer: "synthetic".into(),
        cpu_threads: 8,
        gpu_memory_bytes: gpu_gb * 1_000_000_000,
        ..Default::default()
    };
    Ok(c.workers.register_worker(req).await?.into_inner().worker_id)
}

/// One LeaseJob: the sweep of the job leased, if any.
async fn lease(c: &mut TestCoordinator, worker: &str) -> anyhow::Result<Option<pb::Lease>> {
    Ok(c.workers.lease_job(pb::LeaseJobRequest { worker_id: worker.into() }).await?.into_inner().lease)
}

async fn complete(c: &mut TestCoordinator, worker: &str, l: &pb::Lease) -> anyhow::Result<()> {
    c.complete(worker, l, 1.0).await?;
    Ok(())
}

#[tokio::test]
async fn requirements_priority_and_a_fair_share_decide_the_lease() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    let a = c.submit(&sweep("a", 5, "")).await?;
    let b = c.submit(&sweep("b", 5, "")).await?;
    let gpu = c.submit(&sweep("gpu", 1, "[requirements]\ndevice = \"cuda\"\nmin_gpu_memory_gb = 40")).await?;
    let urgent = c.submit(&sweep("urgent", 1, "priority = 5")).await?;
    let huge = c.submit(&sweep("huge", 1, "[requirements]\ndevice = \"cuda\"\nmin_gpu_memory_gb = 100")).await?;
    let cpu = worker(&mut c, "cpu", "cpu", 0).await?;

    // Priority first: the 4 urgent jobs, although submitted last but one.
    let mut held = Vec::new();
    for _ in 0..4 {
        let l = lease(&mut c, &cpu).await?.expect("a job");
        assert_eq!(l.sweep_id, urgent);
        held.push(l);
    }
    // Then a and b share: with leases held, each new one goes to the sweep running fewer.
    let mut got: HashMap<String, u32> = HashMap::new();
    for _ in 0..10 {
        let l = lease(&mut c, &cpu).await?.expect("a job");
        assert!(l.sweep_id == a || l.sweep_id == b, "a cpu worker got a job of {}", l.sweep_id);
        *got.entry(l.sweep_id.clone()).or_default() += 1;
        held.push(l);
    }
    assert_eq!((got[&a], got[&b]), (5, 5), "held leases split evenly");

    // A GPU worker with 80 GB: the gpu sweep (0 running) before a and b (5 each); never `huge`.
    let cuda = worker(&mut c, "gpu0", "cuda:0", 80).await?;
    for _ in 0..4 {
        assert_eq!(lease(&mut c, &cuda).await?.expect("a job").sweep_id, gpu);
    }
    let huge_status = c.sweeps.get_sweep(pb::GetSweepRequest { sweep_id: huge.clone() }).await?.into_inner();
    let why = huge_status.sweep.expect("sweep").unschedulable;
    assert!(why.contains("100 GB") && why.contains("cuda:0 (8 threads, 80 GB)"), "{why}");
    let gpu_status = c.sweeps.get_sweep(pb::GetSweepRequest { sweep_id: gpu.clone() }).await?.into_inner();
    assert_eq!(gpu_status.sweep.expect("sweep").unschedulable, "", "nothing queued: nothing to say");

    // One worker, lease then complete, one job at a time: it alternates between a and b rather
    // than finishing a first.
    for l in held.drain(..) {
        complete(&mut c, &cpu, &l).await?;
    }
    let mut order = Vec::new();
    while let Some(l) = lease(&mut c, &cpu).await? {
        order.push(if l.sweep_id == a { 'a' } else { 'b' });
        complete(&mut c, &cpu, &l).await?;
    }
    let order: String = order.into_iter().collect();
    // 5 of each sweep's 20 jobs were leased above; the other 30 alternate.
    assert_eq!(order, "ab".repeat(15), "one worker's sequential leases");
    println!("fair share: 10 held leases split a={} b={}; sequential leases alternate: {order}", got[&a], got[&b]);
    c.stop().await?;
    Ok(())
}
