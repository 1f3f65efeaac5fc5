// Generates the messages, clients and servers from millrace/v1/*.proto, plus the descriptor set that the control
// plane registers for gRPC server reflection. protoc comes vendored, so no system install is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC.
    std::env::set_var("PROTOC", protoc);
    let includes = protoc_bin_vendored::include_path()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        "millrace/v1/resources.proto",
        "millrace/v1/control_plane.proto",
        "millrace/v1/worker.proto",
        "millrace/v1/function_runtime.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        // Workers keep each input record while its batch is at the sidecar: Bytes makes that copy free.
        .bytes(".millrace.v1.InputRecord")
        // Outputs are sliced from the received message, not copied one by one.
        .bytes(".millrace.v1.RecordOutputs")
        .bytes(".millrace.v1.PackedResults")
        .file_descriptor_set_path(out.join("millrace_descriptor.bin"))
        .compile_protos(&files, &[".", includes.to_str().ok_or("non-UTF-8 protoc include path")?])?;
    Ok(())
}
