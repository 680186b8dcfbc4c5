//! Records the compiler's version for `ttsq_build_info{rustc}`.

use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|version| {
            let version = version.trim();
            version.strip_prefix("rustc ").unwrap_or(version).to_owned()
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=TTSQ_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
