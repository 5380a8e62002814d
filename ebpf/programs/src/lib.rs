//! No code of its own: lets crates list `enforcer-ebpf` as a build-dependency so cargo rebuilds
//! them when it changes, and holds the macro every eBPF object of this crate ends with.
#![no_std]

/// The end of every eBPF object built here: the license string the kernel's loader reads (no
/// GPL-only helper is used), the panic handler `no_std` requires (nothing panics: the verifier
/// would refuse a program that could), and the `main` the host build of the crate needs.
#[macro_export]
macro_rules! object_epilogue {
    () => {
        #[cfg(target_arch = "bpf")]
        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 11] = *b"Apache-2.0\0";

        #[cfg(target_arch = "bpf")]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[cfg(not(target_arch = "bpf"))]
        fn main() {}
    };
}
