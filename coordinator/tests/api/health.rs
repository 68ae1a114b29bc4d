//! The gRPC health protocol and the data directory's lock: `grpc.health.v1.Health` answers on the
//! main port without a token while every other call still needs one, and alone on the health
//! listener; a second coordinator on a data directory in use is refused, naming the first.

use lorasweep_coordinator::{Config, Error, Listeners};
use lorasweep_proto::pb;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::{helpers::init_tracing, security::tokens};

async fn status(channel: &Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let answer = HealthClient::new(channel.clone()).check(HealthCheckRequest { service: service.to_string() }).await?;
    Ok(ServingStatus::try_from(answer.into_inner().status).unwrap_or(ServingStatus::Unknown))
}

#[tokio::test]
async fn health_needs_no_token_and_the_health_port_serves_only_health() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let (grpc, health) = (TcpListener::bind("127.0.0.1:0").await?, TcpListener::bind("127.0.0.1:0").await?);
    let (grpc_addr, health_addr) = (grpc.local_addr()?, health.local_addr()?);
    let mut config = Config::new(dir.path());
    config.tokens = tokens();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(lorasweep_coordinator::serve_on(
        Listeners { health: Some(health), ..Listeners::grpc(grpc) },
        config.clone(),
        shutdown.clone(),
    ));
    let main = Channel::from_shared(format!("http://{grpc_addr}"))?.connect().await?;
    let probe = Channel::from_shared(format!("http://{health_addr}"))?.connect().await?;

    for service in ["", "lorasweep.v1.Sweeps", "lorasweep.v1.Workers", "lorasweep.v1.Artifacts"] {
        assert_eq!(status(&main, service).await?, ServingStatus::Serving, "main port, {service:?}");
        assert_eq!(status(&probe, service).await?, ServingStatus::Serving, "health port, {service:?}");
    }
    assert_eq!(status(&main, "no.such.Service").await.map_err(|s| s.code()), Err(Code::NotFound));
    // Everything else still needs a token on the main port, and does not exist on the probe port.
    let refused =
        pb::sweeps_client::SweepsClient::new(main.clone()).list_sweeps(pb::ListSweepsRequest::default()).await;
    assert_eq!(refused.map(|_| ()).map_err(|s| s.code()), Err(Code::Unauthenticated));
    let absent =
        pb::sweeps_client::SweepsClient::new(probe.clone()).list_sweeps(pb::ListSweepsRequest::default()).await;
    assert_eq!(absent.map(|_| ()).map_err(|s| s.code()), Err(Code::Unimplemented));

    // One coordinator per data directory.
    let second =
        lorasweep_coordinator::serve(TcpListener::bind("127.0.0.1:0").await?, config, CancellationToken::new())
            .await
            .expect_err("a second coordinator on a data directory in use");
    assert!(matches!(second, Error::DataDirLocked { .. }), "{second:?}");
    let text = second.to_string();
    assert!(text.contains(&format!("pid {}", std::process::id())) && text.contains("another coordinator"), "{text}");

    shutdown.cancel();
    server.await??;
    assert!(status(&probe, "").await.is_err(), "the health port still answers after shutdown");
    Ok(())
}
