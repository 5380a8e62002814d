//! The kernel ABI shared by the eBPF programs and `cordon-enforcer`: map names, layouts and constants.
//!
//! This crate is the single definition of everything both sides of the `bpf()` boundary must
//! agree on. It is `no_std` and holds only `#[repr(C)]`, `Copy` types; the `user` feature adds
//! the `aya::Pod` impls userspace needs to use them as map keys and values.
#![no_std]

/// Version of the pin layout under the pin directory. A program or map layout change must bump
/// it, so a new agent never reuses an incompatible pinned map (aya reuses pins without checking).
/// v3: `Config::agent_tgid` and `Rule::owner` (the management channel belongs to the agent); a
/// v2 program would read them as reserved zeroes and let every process use the channel.
pub const PIN_LAYOUT_VERSION: &str = "v3";

/// Map holding the single [`Config`] record (an `Array` with one entry, index 0).
pub const MAP_CONFIG: &str = "CORDON_CONFIG";
/// IPv4 exclusions: `LpmTrie<[u8; 4], RuleList>`, keys in network byte order.
pub const MAP_RULES_V4: &str = "CORDON_RULES_V4";
/// IPv6 exclusions: `LpmTrie<[u8; 16], RuleList>`, keys in network byte order.
pub const MAP_RULES_V6: &str = "CORDON_RULES_V6";
/// Process names whose sockets are exempt: `HashMap<[u8; 16], u8>`, NUL-padded like the kernel's comm.
pub const MAP_EXEMPT_COMM: &str = "CORDON_EXEMPT_COMM";
/// Thread-group ids of exempt processes found by userspace: `HashMap<u32, u8>`.
pub const MAP_EXEMPT_TGID: &str = "CORDON_EXEMPT_TGID";
/// Counters, indexed by the `STAT_*` constants: `PerCpuArray<u64>`.
pub const MAP_STATS: &str = "CORDON_STATS";

/// Capacity of each exclusion trie.
pub const MAX_PREFIXES: u32 = 16_384;
/// Capacity of the exempt process-name map.
pub const MAX_EXEMPT_COMMS: u32 = 256;
/// Capacity of the exempt thread-group map.
pub const MAX_EXEMPT_TGIDS: u32 = 4_096;

/// Names of the programs in the object (the Rust function names in `enforcer-ebpf`).
pub const PROG_EGRESS: &str = "cordon_egress";
pub const PROG_INGRESS: &str = "cordon_ingress";
pub const PROG_CONNECT4: &str = "cordon_connect4";
pub const PROG_CONNECT6: &str = "cordon_connect6";
pub const PROG_SENDMSG4: &str = "cordon_sendmsg4";
pub const PROG_SENDMSG6: &str = "cordon_sendmsg6";
pub const PROG_SOCK_CREATE: &str = "cordon_sock_create";
pub const PROG_TC_INGRESS: &str = "cordon_tc_ingress";

/// Socket mark that identifies a socket owned by an exempt process. Set by the `sock_create`
/// program (or by the agent on sockets that existed before isolation) and inherited by the
/// sockets a marked listener accepts, so an exempt server keeps serving.
pub const EXEMPT_SOCKET_MARK: u32 = 0xC0D0_0E5E;

/// Socket mark that identifies a socket of the agent itself: only such sockets may use the
/// exclusions whose [`Rule::owner`] is [`OWNER_AGENT`] (the management channel). Set by the
/// `sock_create` program for sockets the agent's process creates, and by the agent on sockets it
/// held before isolation.
pub const AGENT_SOCKET_MARK: u32 = 0xC0D0_0A6E;

/// [`Rule::owner`] values: who may use an exclusion.
pub const OWNER_ANY: u16 = 0;
/// Only the agent's own sockets (its brokers and collectors, the management channel).
pub const OWNER_AGENT: u16 = 1;

/// Linux `TASK_COMM_LEN`: a process name is at most 15 bytes plus a NUL.
pub const COMM_LEN: usize = 16;

/// Protocol selector values in [`Rule::protocol`] (IANA numbers; `PROTO_ICMP` means ICMP for
/// IPv4 and `ICMPv6` for IPv6).
pub const PROTO_ANY: u8 = 0;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Direction bits in [`Rule::directions`].
pub const DIRECTION_OUT: u8 = 1;
pub const DIRECTION_IN: u8 = 2;

/// Most rules that can apply to one prefix after userspace has flattened overlapping prefixes.
pub const MAX_RULES_PER_PREFIX: usize = 16;

/// Indices into [`MAP_STATS`].
pub const STAT_PACKETS_ALLOWED: u32 = 0;
pub const STAT_PACKETS_DROPPED: u32 = 1;
pub const STAT_CONNECTS_REFUSED: u32 = 2;
pub const STAT_SOCKETS_REFUSED: u32 = 3;
pub const STAT_EXEMPT_SOCKETS: u32 = 4;
pub const STAT_ECHO_DROPPED: u32 = 5;
pub const N_STATS: u32 = 8;

/// The isolation switch the programs read on every hook.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// 1 while the host is isolated; 0 makes every program a no-op.
    pub active: u32,
    /// The agent's process id (tgid): the sockets it creates get [`AGENT_SOCKET_MARK`]. 0 while
    /// no agent runs (then no socket may use the management channel).
    pub agent_tgid: u32,
    /// `CLOCK_MONOTONIC_COARSE` nanoseconds at which enforcement stops by itself (timed
    /// isolation); 0 for a manual isolation. Held here so the deadline holds even if the agent
    /// is dead. The coarse clock is what the kernel's tick keeps: reading it costs a few loads,
    /// where the precise clocks read the TSC (a quarter of the cost of an idle hook).
    pub expires_at_coarse_ns: u64,
    /// The agent's own change sequence number, bumped on every change to the isolation, so
    /// `status` can tell which change is in force (not cordon's command generation).
    pub change_seq: u64,
}

impl Config {
    /// Whether the programs must enforce at `now_coarse_ns` (`CLOCK_MONOTONIC_COARSE`).
    #[inline(always)]
    #[expect(
        clippy::inline_always,
        reason = "runs in every eBPF hook; a call would cost verifier state and time"
    )]
    pub fn enforcing_at(&self, now_coarse_ns: u64) -> bool {
        self.active == 1 && (self.expires_at_coarse_ns == 0 || now_coarse_ns < self.expires_at_coarse_ns)
    }
}

/// One exclusion as the kernel sees it, for the prefix it is stored under.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// `PROTO_*`.
    pub protocol: u8,
    /// `DIRECTION_*` bits.
    pub directions: u8,
    /// Inclusive port range, host byte order: the remote port for `out`, the local port for
    /// `in`. `0..=65535` when the exclusion names no port.
    pub port_lo: u16,
    pub port_hi: u16,
    /// `OWNER_*`: whether any socket may use this rule, or only the agent's.
    pub owner: u16,
}

impl Rule {
    /// Whether this rule lets a packet or connection through.
    ///
    /// `protocol` is the packet's IANA protocol, `direction` one `DIRECTION_*` bit, and `port`
    /// the remote port when asking about `out` and the local port when asking about `in`.
    #[inline(always)]
    #[expect(
        clippy::inline_always,
        reason = "runs per packet in eBPF; a call would cost verifier state and time"
    )]
    pub fn allows(&self, protocol: u8, direction: u8, port: u16) -> bool {
        let protocol_matches = self.protocol == PROTO_ANY
            || self.protocol == protocol
            || (self.protocol == PROTO_ICMP && protocol == PROTO_ICMPV6);
        protocol_matches && self.directions & direction != 0 && port >= self.port_lo && port <= self.port_hi
    }

    /// [`Rule::allows`], for a socket that is the agent's (`agent_socket`) or not.
    #[inline(always)]
    #[expect(
        clippy::inline_always,
        reason = "runs per packet in eBPF; a call would cost verifier state and time"
    )]
    pub fn allows_socket(&self, protocol: u8, direction: u8, port: u16, agent_socket: bool) -> bool {
        (self.owner == OWNER_ANY || agent_socket) && self.allows(protocol, direction, port)
    }
}

/// Every rule that applies to one prefix of an exclusion trie.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RuleList {
    pub len: u32,
    pub reserved: u32,
    pub rules: [Rule; MAX_RULES_PER_PREFIX],
}

impl Default for RuleList {
    fn default() -> Self {
        Self { len: 0, reserved: 0, rules: [Rule::default(); MAX_RULES_PER_PREFIX] }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all four are #[repr(C)], Copy, made only of integers, with explicit padding fields,
    // so every bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::RuleList {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn layouts_are_what_the_kernel_maps_were_created_with() {
        assert_eq!(core::mem::size_of::<Config>(), 24);
        assert_eq!(core::mem::size_of::<Rule>(), 8);
        assert_eq!(core::mem::size_of::<RuleList>(), 8 + 8 * MAX_RULES_PER_PREFIX);
    }

    #[test]
    fn rule_matches_protocol_direction_and_port_range() {
        let rule = Rule {
            protocol: PROTO_TCP,
            directions: DIRECTION_OUT,
            port_lo: 5000,
            port_hi: 5010,
            owner: OWNER_ANY,
        };
        assert!(rule.allows(PROTO_TCP, DIRECTION_OUT, 5005));
        assert!(!rule.allows(PROTO_TCP, DIRECTION_OUT, 5011));
        assert!(!rule.allows(PROTO_UDP, DIRECTION_OUT, 5005));
        assert!(!rule.allows(PROTO_TCP, DIRECTION_IN, 5005));
        let icmp = Rule {
            protocol: PROTO_ICMP,
            directions: DIRECTION_IN | DIRECTION_OUT,
            port_lo: 0,
            port_hi: u16::MAX,
            owner: OWNER_ANY,
        };
        assert!(icmp.allows(PROTO_ICMPV6, DIRECTION_IN, 0));
        let management = Rule { owner: OWNER_AGENT, ..rule };
        assert!(management.allows_socket(PROTO_TCP, DIRECTION_OUT, 5005, true));
        assert!(!management.allows_socket(PROTO_TCP, DIRECTION_OUT, 5005, false));
        assert!(rule.allows_socket(PROTO_TCP, DIRECTION_OUT, 5005, false));
    }

    #[test]
    fn deadline_zero_means_manual() {
        let manual = Config { active: 1, agent_tgid: 0, expires_at_coarse_ns: 0, change_seq: 1 };
        assert!(manual.enforcing_at(u64::MAX));
        let timed = Config { expires_at_coarse_ns: 100, ..manual };
        assert!(timed.enforcing_at(99));
        assert!(!timed.enforcing_at(100));
        assert!(!Config { active: 0, ..manual }.enforcing_at(0));
    }
}
