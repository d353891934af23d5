//! The direct-mode container's init program (`src/initprog/pause.rs`, built static by
//! `build.rs`), carried inside the `mnd` binary so that installing mnd installs it.

/// The program.
pub const PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mnd-init"));

/// Its file name under root's folder: by content, so a new build never changes the file a
/// running container has mounted.
pub fn file_name() -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(PROGRAM);
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("mnd-init-{hex}")
}
