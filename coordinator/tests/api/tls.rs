//! TLS: a CA made in the test signs the coordinator's certificate; a client trusting that CA
//! talks to it, a plaintext client and a client trusting another CA cannot.

use std::time::Duration;

use lorasweep_coordinator::{Config, TlsIdentity, serve};
use lorasweep_proto::pb::{self, sweeps_client::SweepsClient};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::security::{ADMIN, authed, tokens};

/// A CA certificate (PEM) and its issuer.
fn ca() -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// A server certificate for `localhost`/127.0.0.1 signed by `issuer`: (cert PEM, key PEM).
fn server_cert(issuer: &Issuer<'static, KeyPair>) -> anyhow::Result<(String, String)> {
    let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

async fn connect(endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
    endpoint.connect_timeout(Duration::from_secs(5)).connect().await
}

#[tokio::test]
async fn tls_with_a_test_made_ca_works_and_refuses_strangers() -> anyhow::Result<()> {
    let (ca_pem, issuer) = ca()?;
    let (cert_pem, key_pem) = server_cert(&issuer)?;
    let (other_ca_pem, _) = ca()?;
    let dir = TempDir::new()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut config = Config::new(dir.path());
    config.tokens = tokens();
    config.tls = Some(TlsIdentity { cert_pem: cert_pem.into_bytes(), key_pem: key_pem.into_bytes() });
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(serve(listener, config, shutdown.clone()));

    let trusted = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)).domain_name("localhost");
    let channel =
        connect(Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))?.tls_config(trusted)?).await?;
    let mut sweeps = SweepsClient::new(channel);
    let submitted = sweeps
        .submit_sweep(authed(
            pb::SubmitSweepRequest { sweep_toml: crate::helpers::grid(1, 1), source: "t".into() },
            Some(ADMIN),
        ))
        .await?
        .into_inner();
    assert_eq!(submitted.jobs, 1);
    // Auth still applies inside TLS.
    let refused = sweeps.list_sweeps(pb::ListSweepsRequest::default()).await.expect_err("no token accepted over TLS");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // A client trusting another CA fails the handshake.
    let stranger = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&other_ca_pem)).domain_name("localhost");
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))?.tls_config(stranger)?;
    let wrong_ca = list_sweeps_via(endpoint).await;
    assert!(wrong_ca.is_err(), "a certificate from an unknown CA was trusted");

    // Plaintext HTTP/2 against the TLS port gets no answer.
    let plain = list_sweeps_via(Endpoint::from_shared(format!("http://{addr}"))?).await;
    assert!(plain.is_err(), "a plaintext client was served");

    shutdown.cancel();
    drop(sweeps);
    handle.await??;
    Ok(())
}

#[tokio::test]
async fn an_unusable_tls_identity_is_refused_at_start() -> anyhow::Result<()> {
    let dir = TempDir::new()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut config = Config::new(dir.path());
    config.tls = Some(TlsIdentity { cert_pem: b"not a certificate".to_vec(), key_pem: b"nor a key".to_vec() });
    let err = serve(listener, config, CancellationToken::new()).await.expect_err("garbage identity accepted");
    assert!(err.to_string().contains("--tls-cert"), "{err}");
    Ok(())
}

/// Connects through `endpoint` and lists sweeps with the admin token; any failure as text.
async fn list_sweeps_via(endpoint: Endpoint) -> Result<(), String> {
    let channel = connect(endpoint).await.map_err(|e| e.to_string())?;
    SweepsClient::new(channel)
        .list_sweeps(authed(pb::ListSweepsRequest::default(), Some(ADMIN)))
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}
