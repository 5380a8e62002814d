//! Builds the eBPF programs in ebpf/programs with aya-build (nightly, bpf-linker) and leaves the
//! object in `OUT_DIR` for `include_bytes_aligned!`.
fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root_dir = format!("{manifest_dir}/../ebpf/programs");
    aya_build::build_ebpf(
        [aya_build::Package { name: "enforcer-ebpf", root_dir: &root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
