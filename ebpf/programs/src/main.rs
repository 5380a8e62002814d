//! The eBPF programs that isolate a host (built for bpfel-unknown-none by enforcer/build.rs).
//!
//! Every program starts by reading [`Config`]: while the host is not isolated (or the
//! kernel-held deadline has passed) each one is a no-op. While isolated:
//! - `cordon_sock_create` marks the agent's sockets and exempt processes' sockets, and refuses
//!   raw sockets;
//! - `cordon_connect4/6` and `cordon_sendmsg4/6` refuse new outbound connections and
//!   datagrams at once (EPERM) unless an `out` exclusion allows them;
//! - `cordon_egress` / `cordon_ingress` drop every packet no exclusion allows;
//! - exclusions owned by the agent (its management channel) allow only the agent's sockets;
//! - `cordon_tc_ingress`, on the host's interfaces, drops ICMP echo requests the kernel would
//!   answer without any socket.
//!
//! Entry points stay thin; the logic is in plain functions returning verdicts. Nothing panics.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::{bpf_sock, TC_ACT_SHOT, TC_ACT_UNSPEC},
        helpers::{
            bpf_get_current_comm, bpf_get_current_pid_tgid,
            generated::{bpf_ktime_get_coarse_ns, bpf_sk_fullsock},
        },
        macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, classifier, map},
        maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray},
        programs::{SkBuffContext, SockAddrContext, SockContext, TcContext},
    };
    use core::ptr::{addr_of, read_volatile};
    use enforcer_common::{
        Config, RuleList, AGENT_SOCKET_MARK, COMM_LEN, DIRECTION_IN, DIRECTION_OUT, EXEMPT_SOCKET_MARK,
        MAX_EXEMPT_COMMS, MAX_EXEMPT_TGIDS, MAX_PREFIXES, MAX_RULES_PER_PREFIX, N_STATS,
        PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, STAT_CONNECTS_REFUSED, STAT_ECHO_DROPPED,
        STAT_EXEMPT_SOCKETS, STAT_PACKETS_ALLOWED, STAT_PACKETS_DROPPED, STAT_SOCKETS_REFUSED,
    };

    // Map statics are named exactly like the MAP_* constants in enforcer-common.
    #[map]
    static CORDON_CONFIG: Array<Config> = Array::pinned(1, 0);
    #[map]
    static CORDON_RULES_V4: LpmTrie<[u8; 4], RuleList> = LpmTrie::pinned(MAX_PREFIXES, 0);
    #[map]
    static CORDON_RULES_V6: LpmTrie<[u8; 16], RuleList> = LpmTrie::pinned(MAX_PREFIXES, 0);
    #[map]
    static CORDON_EXEMPT_COMM: HashMap<[u8; COMM_LEN], u8> = HashMap::pinned(MAX_EXEMPT_COMMS, 0);
    #[map]
    static CORDON_EXEMPT_TGID: HashMap<u32, u8> = HashMap::pinned(MAX_EXEMPT_TGIDS, 0);
    #[map]
    static CORDON_STATS: PerCpuArray<u64> = PerCpuArray::pinned(N_STATS, 0);

    const ALLOW: i32 = 1;
    const DENY: i32 = 0;
    const SOCK_RAW: u32 = 3;
    const TCP_LISTEN: u32 = 10;
    const LOOPBACK_IFINDEX: u32 = 1;
    const ETH_P_IP: u16 = 0x0800;
    const ETH_P_IPV6: u16 = 0x86DD;
    const ETH_HLEN: usize = 14;
    const ICMP_ECHO_REQUEST: u8 = 8;
    const ICMPV6_ECHO_REQUEST: u8 = 128;

    /// The config, if the programs must enforce now. Checks the switch before reading the
    /// clock, so armed programs cost one array lookup.
    #[inline(always)]
    fn enforcing() -> Option<&'static Config> {
        match CORDON_CONFIG.get(0) {
            // SAFETY: the helper has no preconditions.
            Some(config) if config.active == 1 && config.enforcing_at(unsafe { bpf_ktime_get_coarse_ns() }) => {
                Some(config)
            }
            _ => None,
        }
    }

    /// Whether the current process is the agent.
    #[inline(always)]
    fn process_is_agent(config: &Config) -> bool {
        config.agent_tgid != 0 && (bpf_get_current_pid_tgid() >> 32) as u32 == config.agent_tgid
    }

    #[inline(always)]
    fn count(stat: u32) {
        if let Some(counter) = CORDON_STATS.get_ptr_mut(stat) {
            // SAFETY: per-CPU slot returned by the map, valid for this program run.
            unsafe { *counter += 1 };
        }
    }

    #[inline(always)]
    fn process_is_exempt() -> bool {
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if CORDON_EXEMPT_TGID.get_ptr(tgid).is_some() {
            return true;
        }
        match bpf_get_current_comm() {
            Ok(comm) => CORDON_EXEMPT_COMM.get_ptr(comm).is_some(),
            Err(_) => false,
        }
    }

    #[inline(always)]
    fn rules_allow(list: &RuleList, protocol: u8, direction: u8, port: u16, agent: bool) -> bool {
        let len = list.len as usize;
        let mut i = 0;
        while i < MAX_RULES_PER_PREFIX {
            if i >= len {
                return false;
            }
            if list.rules[i].allows_socket(protocol, direction, port, agent) {
                return true;
            }
            i += 1;
        }
        false
    }

    #[inline(always)]
    fn v4_allows(addr: [u8; 4], protocol: u8, direction: u8, port: u16, agent: bool) -> bool {
        match CORDON_RULES_V4.get(Key::new(32, addr)) {
            Some(list) => rules_allow(list, protocol, direction, port, agent),
            None => false,
        }
    }

    #[inline(always)]
    fn v6_allows(addr: [u8; 16], protocol: u8, direction: u8, port: u16, agent: bool) -> bool {
        match CORDON_RULES_V6.get(Key::new(128, addr)) {
            Some(list) => rules_allow(list, protocol, direction, port, agent),
            None => false,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Socket creation: mark exempt sockets, refuse raw sockets.

    #[cgroup_sock(sock_create)]
    pub fn cordon_sock_create(ctx: SockContext) -> i32 {
        sock_create_verdict(ctx.sock)
    }

    /// The agent's sockets get the agent mark, exempt processes' the exempt mark (sockets they
    /// held before isolation are marked by the agent); raw sockets are refused while isolated.
    #[inline(always)]
    fn sock_create_verdict(sock: *mut bpf_sock) -> i32 {
        let Some(config) = enforcing() else { return ALLOW };
        if process_is_agent(config) {
            // SAFETY: the kernel hands sock_create programs a valid, writable socket context.
            unsafe { (*sock).mark = AGENT_SOCKET_MARK };
            return ALLOW;
        }
        if process_is_exempt() {
            // SAFETY: the kernel hands sock_create programs a valid, writable socket context.
            unsafe { (*sock).mark = EXEMPT_SOCKET_MARK };
            count(STAT_EXEMPT_SOCKETS);
            return ALLOW;
        }
        // SAFETY: as above; `type` is readable.
        let socket_type = unsafe { read_volatile(addr_of!((*sock).type_)) };
        if socket_type == SOCK_RAW {
            count(STAT_SOCKETS_REFUSED);
            return DENY;
        }
        ALLOW
    }

    // ---------------------------------------------------------------------------------------
    // New outbound connections and unconnected datagrams: refuse at once with EPERM.

    #[cgroup_sock_addr(connect4)]
    pub fn cordon_connect4(ctx: SockAddrContext) -> i32 {
        address_verdict(&ctx, false)
    }

    #[cgroup_sock_addr(connect6)]
    pub fn cordon_connect6(ctx: SockAddrContext) -> i32 {
        address_verdict(&ctx, true)
    }

    #[cgroup_sock_addr(sendmsg4)]
    pub fn cordon_sendmsg4(ctx: SockAddrContext) -> i32 {
        address_verdict(&ctx, false)
    }

    #[cgroup_sock_addr(sendmsg6)]
    pub fn cordon_sendmsg6(ctx: SockAddrContext) -> i32 {
        address_verdict(&ctx, true)
    }

    #[inline(always)]
    fn address_verdict(ctx: &SockAddrContext, ipv6: bool) -> i32 {
        let Some(config) = enforcing() else { return ALLOW };
        let sa = ctx.sock_addr;
        // SAFETY: the kernel hands sock_addr programs a valid context; every field is read with
        // a single load of its own size, as the verifier requires.
        let (sk, user_port, protocol) = unsafe {
            (
                read_volatile(addr_of!((*sa).__bindgen_anon_1.sk)),
                read_volatile(addr_of!((*sa).user_port)),
                read_volatile(addr_of!((*sa).protocol)),
            )
        };
        // SAFETY: `sk` is a PTR_TO_SOCKET, never null in these hooks.
        let mark = unsafe { read_volatile(addr_of!((*sk).mark)) };
        if mark == EXEMPT_SOCKET_MARK || process_is_exempt() {
            return ALLOW;
        }
        let agent = mark == AGENT_SOCKET_MARK || process_is_agent(config);
        let port = u16::from_be(user_port as u16);
        let protocol = protocol as u8;
        let allowed = if ipv6 {
            // SAFETY: as above, one 32-bit load per word.
            let words = unsafe {
                [
                    read_volatile(addr_of!((*sa).user_ip6[0])),
                    read_volatile(addr_of!((*sa).user_ip6[1])),
                    read_volatile(addr_of!((*sa).user_ip6[2])),
                    read_volatile(addr_of!((*sa).user_ip6[3])),
                ]
            };
            if words[0] == 0 && words[1] == 0 && words[2] == u32::to_be(0xffff) {
                // IPv4-mapped address on a dual-stack socket.
                let v4 = words[3].to_ne_bytes();
                v4[0] == 127 || v4_allows(v4, protocol, DIRECTION_OUT, port, agent)
            } else if words[0] == 0 && words[1] == 0 && words[2] == 0 && words[3] == u32::to_be(1) {
                true
            } else {
                v6_allows(words_to_bytes(words), protocol, DIRECTION_OUT, port, agent)
            }
        } else {
            // SAFETY: as above.
            let v4 = unsafe { read_volatile(addr_of!((*sa).user_ip4)) }.to_ne_bytes();
            v4[0] == 127 || v4_allows(v4, protocol, DIRECTION_OUT, port, agent)
        };
        if allowed {
            ALLOW
        } else {
            count(STAT_CONNECTS_REFUSED);
            DENY
        }
    }

    #[inline(always)]
    fn words_to_bytes(words: [u32; 4]) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let word = words[i].to_ne_bytes();
            bytes[i * 4] = word[0];
            bytes[i * 4 + 1] = word[1];
            bytes[i * 4 + 2] = word[2];
            bytes[i * 4 + 3] = word[3];
            i += 1;
        }
        bytes
    }

    // ---------------------------------------------------------------------------------------
    // Every packet of every socket in the cgroup.

    #[cgroup_skb(egress)]
    pub fn cordon_egress(ctx: SkBuffContext) -> i32 {
        packet_verdict(&ctx, true)
    }

    #[cgroup_skb(ingress)]
    pub fn cordon_ingress(ctx: SkBuffContext) -> i32 {
        packet_verdict(&ctx, false)
    }

    /// What the cgroup_skb programs need to know about a packet.
    struct Packet {
        ipv6: bool,
        remote_v4: [u8; 4],
        remote_v6: [u8; 16],
        protocol: u8,
        local_port: u16,
        remote_port: u16,
        /// An outgoing TCP reset carrying no data: the kernel's answer when a severed
        /// connection is aborted. Let through so the peer learns the connection is gone.
        bare_reset: bool,
    }

    #[inline(always)]
    fn packet_verdict(ctx: &SkBuffContext, egress: bool) -> i32 {
        if enforcing().is_none() {
            return ALLOW;
        }
        let skb = ctx.skb.skb;
        // SAFETY: valid __sk_buff context for this run; plain field reads.
        let (ifindex, sk) = unsafe {
            (read_volatile(addr_of!((*skb).ifindex)), read_volatile(addr_of!((*skb).__bindgen_anon_2.sk)))
        };
        let (mark, listening) = socket_facts(sk);
        let verdict = if ifindex == LOOPBACK_IFINDEX || mark == EXEMPT_SOCKET_MARK {
            ALLOW
        } else {
            match parse_packet(ctx, egress) {
                Ok(packet) => packet_allowed(&packet, egress, listening, mark == AGENT_SOCKET_MARK),
                // A packet we cannot read is not let through while isolated.
                Err(()) => DENY,
            }
        };
        count(if verdict == ALLOW { STAT_PACKETS_ALLOWED } else { STAT_PACKETS_DROPPED });
        verdict
    }

    /// The socket's mark and whether it is a TCP listener (0/false when there is no full socket).
    #[inline(always)]
    fn socket_facts(sk: *mut bpf_sock) -> (u32, bool) {
        if sk.is_null() {
            return (0, false);
        }
        // SAFETY: bpf_sk_fullsock accepts any socket pointer from the context and returns null
        // or a full socket whose fields may be read.
        let full = unsafe { bpf_sk_fullsock(sk) };
        if full.is_null() {
            return (0, false);
        }
        // SAFETY: non-null full socket, see above.
        unsafe {
            let protocol = read_volatile(addr_of!((*full).protocol));
            let state = read_volatile(addr_of!((*full).state));
            (read_volatile(addr_of!((*full).mark)), protocol == u32::from(PROTO_TCP) && state == TCP_LISTEN)
        }
    }

    #[inline(always)]
    fn packet_allowed(packet: &Packet, egress: bool, listening: bool, agent: bool) -> i32 {
        if egress && packet.bare_reset {
            return ALLOW;
        }
        // One longest-prefix lookup; its rule list answers for both directions.
        let list = if packet.ipv6 {
            CORDON_RULES_V6.get(Key::new(128, packet.remote_v6))
        } else {
            CORDON_RULES_V4.get(Key::new(32, packet.remote_v4))
        };
        let Some(list) = list else { return DENY };
        // `in` rules name the local port, `out` rules the remote one. Packets of connections
        // this host started match `out` rules in both directions; a listener's incoming
        // packets are new connections towards this host and match only `in` rules.
        let out_applies = egress || !listening;
        let len = list.len as usize;
        let mut i = 0;
        while i < MAX_RULES_PER_PREFIX && i < len {
            let rule = &list.rules[i];
            if rule.allows_socket(packet.protocol, DIRECTION_IN, packet.local_port, agent)
                || (out_applies && rule.allows_socket(packet.protocol, DIRECTION_OUT, packet.remote_port, agent))
            {
                return ALLOW;
            }
            i += 1;
        }
        DENY
    }

    /// Reads what the verdict needs with as few helper calls as possible: one for an IPv4
    /// header, two for IPv6, one for the transport header.
    #[inline(always)]
    fn parse_packet(ctx: &SkBuffContext, egress: bool) -> Result<Packet, ()> {
        let header: [u8; 20] = ctx.load(0).map_err(|_| ())?;
        let mut packet = Packet {
            ipv6: false,
            remote_v4: [0; 4],
            remote_v6: [0; 16],
            protocol: 0,
            local_port: 0,
            remote_port: 0,
            bare_reset: false,
        };
        let (l4_offset, l3_payload_len) = match header[0] >> 4 {
            4 => {
                let header_len = usize::from(header[0] & 0x0f) * 4;
                let total_len = u16::from_be_bytes([header[2], header[3]]);
                let fragment = u16::from_be_bytes([header[6], header[7]]);
                packet.protocol = header[9];
                let at = if egress { 16 } else { 12 };
                packet.remote_v4 = [header[at], header[at + 1], header[at + 2], header[at + 3]];
                if fragment & 0x1fff != 0 {
                    // Not the first fragment: no transport header to read.
                    return Ok(packet);
                }
                (header_len, usize::from(total_len).saturating_sub(header_len))
            }
            6 => {
                packet.ipv6 = true;
                packet.protocol = header[6];
                packet.remote_v6 = ctx.load(if egress { 24 } else { 8 }).map_err(|_| ())?;
                (40, usize::from(u16::from_be_bytes([header[4], header[5]])))
            }
            _ => return Err(()),
        };
        if packet.protocol == PROTO_TCP {
            // Ports, then data offset and flags at bytes 12 and 13.
            if let Ok(tcp) = ctx.load::<[u8; 14]>(l4_offset) {
                set_ports(&mut packet, egress, [tcp[0], tcp[1], tcp[2], tcp[3]]);
                let data_offset = usize::from(tcp[12] >> 4) * 4;
                packet.bare_reset = tcp[13] & 0x04 != 0 && l3_payload_len == data_offset;
            }
        } else if packet.protocol != PROTO_ICMP && packet.protocol != PROTO_ICMPV6 {
            if let Ok(ports) = ctx.load::<[u8; 4]>(l4_offset) {
                set_ports(&mut packet, egress, ports);
            }
        }
        Ok(packet)
    }

    #[inline(always)]
    fn set_ports(packet: &mut Packet, egress: bool, ports: [u8; 4]) {
        let source = u16::from_be_bytes([ports[0], ports[1]]);
        let destination = u16::from_be_bytes([ports[2], ports[3]]);
        (packet.local_port, packet.remote_port) =
            if egress { (source, destination) } else { (destination, source) };
    }

    // ---------------------------------------------------------------------------------------
    // Interface ingress: ICMP echo requests are answered by the kernel with no socket, so the
    // cgroup programs never see them.

    #[classifier]
    pub fn cordon_tc_ingress(ctx: TcContext) -> i32 {
        if enforcing().is_none() {
            return TC_ACT_UNSPEC;
        }
        // The kernel answers an echo request itself, for no socket: the agent's rules never apply.
        match echo_request_source(&ctx) {
            Some(Source::V4(addr)) if !v4_allows(addr, PROTO_ICMP, DIRECTION_IN, 0, false) => drop_echo(),
            Some(Source::V6(addr)) if !v6_allows(addr, PROTO_ICMPV6, DIRECTION_IN, 0, false) => drop_echo(),
            _ => TC_ACT_UNSPEC,
        }
    }

    enum Source {
        V4([u8; 4]),
        V6([u8; 16]),
    }

    #[inline(always)]
    fn drop_echo() -> i32 {
        count(STAT_ECHO_DROPPED);
        TC_ACT_SHOT as i32
    }

    #[inline(always)]
    fn echo_request_source(ctx: &TcContext) -> Option<Source> {
        let ethertype = u16::from_be(ctx.load::<u16>(12).ok()?);
        match ethertype {
            ETH_P_IP => {
                let first: u8 = ctx.load(ETH_HLEN).ok()?;
                let protocol: u8 = ctx.load(ETH_HLEN + 9).ok()?;
                let icmp_type: u8 = ctx.load(ETH_HLEN + usize::from(first & 0x0f) * 4).ok()?;
                (protocol == PROTO_ICMP && icmp_type == ICMP_ECHO_REQUEST)
                    .then(|| ctx.load(ETH_HLEN + 12).ok().map(Source::V4))
                    .flatten()
            }
            ETH_P_IPV6 => {
                let next_header: u8 = ctx.load(ETH_HLEN + 6).ok()?;
                let icmp_type: u8 = ctx.load(ETH_HLEN + 40).ok()?;
                (next_header == PROTO_ICMPV6 && icmp_type == ICMPV6_ECHO_REQUEST)
                    .then(|| ctx.load(ETH_HLEN + 8).ok().map(Source::V6))
                    .flatten()
            }
            _ => None,
        }
    }
}

enforcer_ebpf::object_epilogue!();
