//! Generates the tonic/prost code with a vendored protoc, so a plain `cargo build`
//! needs nothing from apt.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("strata_descriptor.bin"))
        .bytes(".strata.v1")
        .compile_protos(&["proto/strata/v1/cache.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
