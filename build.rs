//! Gives every binary and test a run path to the CTranslate2 library the setup unpacks from
//! its pinned wheel into `models/ctranslate2` (`scripts/deps.sh models`), where
//! `.cargo/config.toml` also points the linker. The image puts the models elsewhere and says
//! so with `LD_LIBRARY_PATH`.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let dir = root.join("models").join("ctranslate2");
    println!("cargo:rerun-if-changed={}", dir.display());
    if !dir.join("libctranslate2.so").exists() {
        println!(
            "cargo:warning=no CTranslate2 library in {}: run scripts/deps.sh models first",
            dir.display()
        );
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
}
