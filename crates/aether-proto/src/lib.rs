//! The aetherfs.v1 API, generated from `proto/aetherfs/v1/*.proto` by this crate's build
//! script. This is the only crate that runs code generation; everything else imports from here.

#![allow(clippy::all, missing_docs)]

/// Generated messages, clients (`*_client`) and servers (`*_server`) of package `aetherfs.v1`.
pub mod v1 {
    tonic::include_proto!("aetherfs.v1");
}

/// Encoded `FileDescriptorSet` of the v1 API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("aetherfs_v1_descriptor");

pub mod transport;

pub use v1::*;
