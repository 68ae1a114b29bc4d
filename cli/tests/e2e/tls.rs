//! TLS end to end: a CA made in the test signs the coordinator's certificate; a worker and the
//! CLI given that CA (`--tls-ca`) work over `https://`, the CLI without it is told to give one.

use lorasweep_coordinator::TlsIdentity;
use lorasweep_worker::ConnectArgs;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_util::sync::CancellationToken;

use crate::helpers::{self, cli, cli_ok};

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

    let connect = ConnectArgs { tls_ca: Some(ca_file.clone()), ..Default::default() };
    let worker = helpers::spawn_worker_with(&url, "tls", 1, &connect)?;
    helpers::await_succeeded_via_cli(&url, &["--tls-ca", ca_path], &sweep, 1).await?;
    worker.stop().await?;
    stop.cancel();
    server.await??;
    Ok(())
}
