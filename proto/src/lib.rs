//! The Millrace gRPC contract, generated from `millrace/v1/*.proto` by `build.rs`.
//! Crates meet only through these types.

pub mod auth;
pub mod endpoints;
pub mod tls;

pub mod v1 {
    tonic::include_proto!("millrace.v1");
}

/// The encoded file descriptor set of every Millrace service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("millrace_descriptor");
