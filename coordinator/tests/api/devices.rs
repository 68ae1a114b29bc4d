//! What a worker says of its machine at registration (the GPUs a scheduler bound to it, its CPU
//! threads, its GPU's name and memory) comes back from ListWorkers, and an oversized value is refused by name.

use lorasweep_proto::pb;
use tonic::Code;

use crate::helpers::spawn_coordinator;

#[tokio::test]
async fn visible_devices_and_threads_are_listed_per_worker() -> anyhow::Result<()> {
    let mut c = spawn_coordinator().await?;
    for (name, cvd, gpu) in
        [("slurm-0", "0", "NVIDIA H100 80GB HBM3"), ("slurm-1", "1", "NVIDIA H100 80GB HBM3"), ("laptop", "", "")]
    {
        c.workers
            .register_worker(pb::RegisterWorkerRequest {
                name: name.into(),
                device: "cuda".into(),
                trainer: "candle".into(),
                visible_devices: cvd.into(),
                cpu_threads: 8,
                gpu_memory_bytes: if gpu.is_empty() { 0 } else { 85_520_809_984 },
                gpu_name: gpu.into(),
            })
            .await?;
    }
    let listed = c.sweeps.list_workers(pb::ListWorkersRequest::default()).await?.into_inner().workers;
    let mut seen: Vec<(String, String, u32, String, u64)> = listed
        .into_iter()
        .map(|w| (w.name, w.visible_devices, w.cpu_threads, w.gpu_name, w.gpu_memory_bytes))
        .collect();
    seen.sort();
    let h100 = ("NVIDIA H100 80GB HBM3", 85_520_809_984);
    assert_eq!(
        seen,
        [("laptop", "", 8, ("", 0)), ("slurm-0", "0", 8, h100), ("slurm-1", "1", 8, h100)]
            .map(|(n, v, t, (g, m))| (n.to_string(), v.to_string(), t, g.to_string(), m))
            .to_vec()
    );
    let refused = c
        .workers
        .register_worker(pb::RegisterWorkerRequest {
            name: "w".into(),
            visible_devices: "0,".repeat(200),
            ..Default::default()
        })
        .await
        .expect_err("an oversized visible_devices");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("visible_devices"), "{}", refused.message());
    c.stop().await?;
    Ok(())
}
