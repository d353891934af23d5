//! Reads the Slurm version of the headers the plugin is built against (as slurm-spank's
//! bindgen finds them: `MND_SLURM_INCLUDE`, else /usr/include), gives the plugin that
//! version, and refuses a feature that does not fit it, saying which to use.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=MND_SLURM_INCLUDE");
    let include = std::env::var("MND_SLURM_INCLUDE").unwrap_or_else(|_| "/usr/include".into());
    let header = PathBuf::from(&include).join("slurm/slurm_version.h");
    println!("cargo:rerun-if-changed={}", header.display());
    let text = std::fs::read_to_string(&header).unwrap_or_else(|e| {
        panic!(
            "mnd-spank: cannot read {} ({e}): install the libslurm-dev of the Slurm the plugin is for, or set MND_SLURM_INCLUDE to the folder holding slurm/slurm_version.h",
            header.display()
        )
    });
    let number = text
        .lines()
        .find_map(|l| l.strip_prefix("#define SLURM_VERSION_NUMBER"))
        .and_then(|v| u32::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
        .unwrap_or_else(|| panic!("mnd-spank: no SLURM_VERSION_NUMBER in {}", header.display()));
    let (major, minor) = (number >> 16, (number >> 8) & 0xff);
    let modern = (major, minor) >= (23, 11);
    let old_feature = std::env::var_os("CARGO_FEATURE_SLURM_22").is_some();
    let new_feature = std::env::var_os("CARGO_FEATURE_SLURM_23").is_some();
    let fits = if modern {
        new_feature
    } else {
        old_feature && !new_feature
    };
    if !fits {
        let want = if modern {
            "--no-default-features --features slurm-23"
        } else {
            "the default features (slurm-22)"
        };
        panic!(
            "mnd-spank: the Slurm headers in {include} are {major}.{minor:02}: build the plugin with {want} (scripts/install.sh --plugin picks it)"
        );
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(
        out.join("plugin.rs"),
        format!(
            "SPANK_PLUGIN!(b\"mnd_spank\", {:#08x}, MndSpank);\n\
             /// The Slurm major.minor this plugin was built for.\n\
             const BUILT_FOR: &str = \"{major}.{minor:02}\";\n",
            number & 0xffff00
        ),
    )
    .expect("write plugin.rs");
}
