//! The floor the enforcer benchmark measures against: two `cgroup_skb` programs that let every
//! packet through at once, so that the kernel's cost of running *any* packet program on every
//! packet of a cgroup can be told apart from what cordon's programs add. cordon never loads them.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};

    #[cgroup_skb(egress)]
    pub fn baseline_egress(_ctx: SkBuffContext) -> i32 {
        1
    }

    #[cgroup_skb(ingress)]
    pub fn baseline_ingress(_ctx: SkBuffContext) -> i32 {
        1
    }
}

enforcer_ebpf::object_epilogue!();
