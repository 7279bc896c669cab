use which::which;

/// Rebuild when bpf-linker changes (it is an undeclared tool dependency of this crate; the same
/// approach as aya-template).
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
