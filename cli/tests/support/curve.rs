//! Shared by the `e2e` and `engine` test binaries (included with `#[path]`).

/// A job's whole curves: GetCurve's streamed pieces concatenated.
pub(crate) async fn read_curve(
    sweeps: &mut lorasweep_proto::pb::sweeps_client::SweepsClient<tonic::transport::Channel>,
    job_id: &str,
) -> Result<lorasweep_proto::pb::GetCurveResponse, tonic::Status> {
    let mut stream =
        sweeps.get_curve(lorasweep_proto::pb::GetCurveRequest { job_id: job_id.to_string() }).await?.into_inner();
    let mut curve = lorasweep_proto::pb::GetCurveResponse::default();
    while let Some(piece) = stream.message().await? {
        lorasweep_common::convert::append_curve(&mut curve, piece);
    }
    Ok(curve)
}
