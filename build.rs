//! Builds the direct-mode container's init (`src/initprog/pause.rs`) as a static program
//! with no library, for `include_bytes!` in `src/initprog.rs`.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "src/initprog/pause.rs";
    println!("cargo:rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("mnd-init");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "-C",
            "panic=abort",
            "-C",
            "opt-level=2",
        ])
        .args(["-C", "relocation-model=static", "-C", "strip=symbols"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args(["-C", "link-arg=-static", "-o"])
        .arg(&out)
        .arg(src)
        .status()
        .expect("running rustc for the container init");
    assert!(
        status.success(),
        "building the container init from {src} failed"
    );
}
