//! ONNX Runtime, for the two small models of turn-taking: Silero VAD ([`super::silero`]) and
//! Smart Turn ([`super::smart_turn`]).
//!
//! The library is not linked: it is loaded at start from `VOXIO_MODELS_DIR/onnxruntime/
//! libonnxruntime.so`, which the setup unpacks from the pinned `onnxruntime` wheel beside the
//! models (`ort` with `load-dynamic`; its default would download a build at compile time).
//! Without it, both models fall back (earshot, the fixed hangover) and the server says so once.

use std::path::Path;
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

/// Where the setup puts the library, under the models directory.
pub const LIBRARY: &str = "onnxruntime/libonnxruntime.so";

/// The process's one ONNX Runtime environment, or why there is none.
static RUNTIME: OnceLock<Result<Environment, String>> = OnceLock::new();

/// The environment, loaded from `models/onnxruntime/libonnxruntime.so` on first use (the first
/// caller's directory wins: a process has one runtime).
pub fn runtime(models: &Path) -> Result<&'static Environment, String> {
    RUNTIME
        .get_or_init(|| {
            let lib = models.join(LIBRARY);
            if !lib.is_file() {
                return Err(format!("{} not found", lib.display()));
            }
            ort::init_from(&lib)
                .map_err(|e| format!("{}: {e}", lib.display()))?
                .with_name("voxio")
                .with_telemetry(false)
                .build()
                .map_err(|e| format!("ONNX Runtime from {}: {e}", lib.display()))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Loads the model at `path` for inference on `threads` threads of the caller's (no thread
/// pool between runs: each run is small).
pub fn session(models: &Path, path: &Path, threads: usize) -> Result<Session, String> {
    if !path.is_file() {
        return Err(format!("{} not found", path.display()));
    }
    let env = runtime(models)?;
    let fail = |e: String| format!("{}: {e}", path.display());
    Session::builder(env)
        .map_err(|e| fail(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| fail(e.to_string()))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| fail(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| fail(e.to_string()))?
        .commit_from_file(path)
        .map_err(|e| fail(e.to_string()))
}
