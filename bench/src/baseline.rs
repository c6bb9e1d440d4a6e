//! The floor: an empty unary RPC (`bench.v1.Baseline/Ping`) on the same stack Writ uses
//! (tonic, prost, HTTP/2 over loopback TCP) with the same server settings
//! (`writ_server::start`'s header limit, stream limit, per-connection concurrency limit
//! and request timeout), so "Validate as a fraction of the empty RPC" isolates Writ's
//! own work.

use tonic::{Request, Response, Status};

/// Generated types and stubs for `proto/bench/v1/empty.proto`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("bench.v1");
}

/// The service: answers every Ping with an empty message.
#[derive(Debug, Default, Clone, Copy)]
pub struct EmptyService;

#[tonic::async_trait]
impl pb::baseline_server::Baseline for EmptyService {
    async fn ping(&self, _request: Request<pb::Empty>) -> Result<Response<pb::Empty>, Status> {
        Ok(Response::new(pb::Empty {}))
    }
}

/// A tonic server builder configured exactly as `writ_server::start` configures Writ's.
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_max_header_list_size(16 * 1024)
        .max_concurrent_streams(256)
        .concurrency_limit_per_connection(256)
        .timeout(std::time::Duration::from_secs(30))
}
