//! Generates the aetherfs.v1 messages, clients and servers from `proto/`, plus the file
//! descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<PathBuf> = [
        "common",
        "session",
        "workspace",
        "history",
        "review",
        "knowledge",
        "content",
        "bus",
    ]
    .iter()
    .map(|name| root.join(format!("aetherfs/v1/{name}.proto")))
    .collect();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // `bytes` fields become `bytes::Bytes`, so data moves between streams without copies.
    tonic_prost_build::configure()
        .bytes(".aetherfs.v1")
        .file_descriptor_set_path(out.join("aetherfs_v1_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&root))?;
    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}
