//! Links libgcc's unwinder into the binary instead of loading `libgcc_s.so.1` at every
//! start.
//!
//! The supervisor starts one process of this binary per worker, so what a start costs
//! is multiplied by the pool (`scripts/bench workers`: 1,000 workers). Loading
//! `libgcc_s.so.1` costs more than its mapping: its constructor (`__cpu_indicator_init`)
//! probes the CPU with `cpuid`, and on a virtual machine every `cpuid` traps to the
//! hypervisor; ~0.1 ms of CPU a start here, 1,000 bare starts 0.92 s -> 0.85 s.
//!
//! rustc links `-lgcc_s` by name on `*-linux-gnu`, and `-static-libgcc` does not change
//! that. So this script puts a `libgcc_s.so` of its own first on the link path: a linker
//! script that names the static unwinder (`libgcc_eh.a`, the part of libgcc_s that Rust
//! uses), the same one `gcc -static-libgcc` links. Where the C compiler cannot name an
//! existing `libgcc_eh.a` (another toolchain), nothing changes.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if target_os != "linux" || target_env != "gnu" {
        return;
    }
    let Some(eh) = static_unwinder() else {
        println!("cargo:warning=no libgcc_eh.a found: libgcc_s.so.1 stays a dependency");
        return;
    };
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    // ld reads a file it does not recognise as an object or archive as a linker script
    // (glibc's own libc.so is one).
    let script = format!("INPUT({})\n", eh.display());
    if std::fs::write(out.join("libgcc_s.so"), script).is_ok() {
        println!("cargo:rustc-link-search=native={}", out.display());
    }
}

/// The path of `libgcc_eh.a` as the C compiler (the linker driver) knows it, if it is
/// an existing file whose path a linker script can hold.
fn static_unwinder() -> Option<PathBuf> {
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let out = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    // Without the library, the compiler echoes the bare name back.
    let plain = path
        .to_str()
        .is_some_and(|p| !p.contains(|c: char| c == '(' || c == ')' || c.is_whitespace()));
    (out.status.success() && path.is_absolute() && path.is_file() && plain).then_some(path)
}
