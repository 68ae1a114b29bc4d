//! TLS end to end: a CA made in the test signs the coordinator's certificate; a worker and the
//! CLI given that CA (`--tls-ca`) work over `https://`, the CLI without it is told to give one.

use std::time::Duration;

use lorasweep_coordinator::TlsIdentity;
use lorasweep_worker::{ConnectArgs, TrainerKind, WorkerArgs};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_util::sync::CancellationToken;

use crate::helpers::{self, await_condition, cli, cli_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_cli_talk_to_a_tls_coordinator_with_the_ca() -> anyhow::Result<()> {
    helpers::init_tracing();
    let dir = tempfile::tempdir()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca_pem = ca_params.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate()?;
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&server_key, &issuer)?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem)?;
    let ca_path = ca_file.to_str().expect("utf-8 path");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("https://localhost:{}", listener.local_addr()?.port());
    let mut config = lorasweep_coordinator::Config::new(dir.path().join("data"));
    config.tls = Some(TlsIdentity {
        cert_pem: server_cert.pem().into_bytes(),
        key_pem: server_key.serialize_pem().into_bytes(),
    });
    let stop = CancellationToken::new();
    let server = tokio::spawn(lorasweep_coordinator::serve(listener, config, stop.clone()));

    let without = cli(&url, &["status"]).await?;
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("--tls-ca"));

    let sweep_file = dir.path().join("one.toml");
    std::fs::write(
        &sweep_file,
        "[train]\nmax_steps = 3\n[grid]\ninits = [\"ortho-eye\"]\nlrs = [5e-4]\nseeds = [1]\n",
    )?;
    let sweep =
        cli_ok(&url, &["--tls-ca", ca_path, "submit", sweep_file.to_str().expect("utf-8")]).await?.trim().to_string();

    let args = WorkerArgs {
        name: Some("tls".into()),
        device: "cpu".into(),
        trainer: TrainerKind::Synthetic,
        synthetic_step_ms: 1,
        max_backoff_ms: 100,
    };
    let connect = ConnectArgs { tls_ca: Some(ca_file.clone()), ..Default::default() };
    let worker_stop = CancellationToken::new();
    let worker = tokio::spawn(lorasweep_worker::run(
        lorasweep_worker::Config::new(&url, args)?.with_connect(&connect)?,
        worker_stop.clone(),
    ));
    await_condition("the job to finish over TLS", Duration::from_secs(20), || {
        let (sweep, url) = (sweep.clone(), url.clone());
        async move {
            let out = cli_ok(&url, &["--tls-ca", ca_path, "status", &sweep, "--json"]).await?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            Ok((v["counts"]["succeeded"] == 1).then_some(()))
        }
    })
    .await?;
    worker_stop.cancel();
    worker.await??;
    stop.cancel();
    server.await??;
    Ok(())
}
