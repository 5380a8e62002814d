//! The kernel ABI shared by the eBPF programs and `cordon-enforcer`.
#![no_std]
