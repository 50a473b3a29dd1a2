//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// nsflow tc programs: count every packet of a port, per direction, address
// family and L4 protocol, and record IPv4/IPv6 flows. They only observe:
// both return TC_ACT_UNSPEC, which is also TCX_NEXT, so any later program
// runs and the packet's fate is unchanged.
//
// The maps are pinned across runs: a change to what their entries hold or
// where they are looked up that keeps their sizes must bump pinLayout
// (layout.go).
//
// Cost matters (the budget is a few tens of ns per packet), hence per-CPU
// tables (no atomics), one lookup for the port and one for the flow, a
// coarse clock, and few cache lines: on real traffic the cost is loads
// that miss, more than instructions.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

// Older uapi headers lack the tcx verdicts; TCX_NEXT equals TC_ACT_UNSPEC.
#ifndef TCX_NEXT
#define TCX_NEXT -1
#endif

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

// skb->pkt_type of the copy of a sent multicast or broadcast packet that
// the kernel loops back to the sender (linux/if_packet.h).
#define PACKET_LOOPBACK 5

enum dir { DIR_INGRESS, DIR_EGRESS, DIR_MAX };
enum family { FAM_IPV4, FAM_IPV6, FAM_OTHER, FAM_MAX };
enum l4 { L4_TCP, L4_UDP, L4_ICMP, L4_OTHER, L4_MAX };

// Headers are parsed up to this many bytes into the frame: two VLAN tags,
// a 60-byte IPv4 header or an IPv6 header with a few extension headers, and
// the first bytes of TCP.
#define PARSE_MAX 256
#define IPV6_EXT_MAX 6
// What parse_slow pulls into the linear part: an L4 header may start at
// PARSE_MAX, and TCP's flags are 14 bytes into it.
#define PULL_MAX (PARSE_MAX + 14)

struct counter {
	__u64 packets;  // skbs, as the kernel's interface statistics count
	__u64 segments; // packets on the wire: gso_segs, at least 1 (see gso_segs_unset)
	__u64 bytes;    // skb->len, MAC header included
};

struct port_key {
	__u64 netns_cookie;
	__u32 ifindex;
	__u32 pad;
};

struct port_stats {
	struct counter c[DIR_MAX][FAM_MAX][L4_MAX];
};

#define COUNTERS (DIR_MAX * FAM_MAX * L4_MAX)

// counter_index is a counter's index in port_stats.c, flattened. The
// classes come back from the stack, where the verifier knows them only as
// bytes, so the bound is checked in assembly, on the register the index
// is then used from: clang would drop a C check it proves redundant, or
// check a copy, which kernels before 6.4 do not relate to the original.
// An index out of range cannot happen; it would count as counter 0.
static __always_inline __u32 counter_index(__u8 dir, __u8 family, __u8 l4)
{
	__u32 i = ((dir & 1) * FAM_MAX + family) * L4_MAX + l4;

	asm volatile("if %[i] < %[n] goto +1; %[i] = 0" : [i] "+w"(i) : [n] "i"(COUNTERS));
	return i;
}

// A port slot: the fast path for attached ports. The slot of a port is
// fixed by port_slot_index; user space tags it (on every CPU) when it
// attaches, and a packet whose port's slot carries another tag (two ports
// hash alike) or none falls back to the nsflow_ports hash map.
//
// A slot is twelve cache lines, each with the port's tag and two of its
// counters (counter_index i in line i / 2), so that a packet touches one
// line of its port's slot: the tag it checks is next to what it adds to.
//
// A packet of a recorded flow does not touch its port's slot at all: its
// flow cache entry carries the port's counts too, and adds them to the
// slot at write-back (readers add the entries' pending counts). That saves
// a cache line per packet, which on a TCP stream, whose copies evict the
// tables between packets, is most of the programs' cost. claim tells one
// claim of a slot from the next, so that counts pending for a port whose
// slot was freed (its counts deleted) never reach a later claim.
struct port_line {
	__u64 netns_cookie;
	__u32 ifindex;
	__u32 claim; // user space's id of this claim of the slot; never 0 once claimed
	struct counter c[2];
} __attribute__((aligned(64)));

struct port_slot {
	struct port_line l[COUNTERS / 2];
};

#define PORT_SLOTS 1024

struct flow_key {
	__u64 netns_cookie;
	__u32 ifindex;
	__u8 dir;
	__u8 family; // 4 or 6
	__u8 proto;  // IP protocol, or the last IPv6 next header reached
	__u8 pad;
	__u16 sport; // host order; ICMP type, 0xffff when unknown (fragment, truncated)
	__u16 dport; // host order; ICMP code, 0xffff when unknown
	__u32 pad2;
	__u8 src[16]; // IPv4 uses the first 4 bytes
	__u8 dst[16];
};

// A flow record in the shared nsflow_flows hash map. Counts reach it from
// the per-CPU flow cache when a cache entry is written back (flushed).
struct flow_value {
	__u64 packets;
	__u64 segments;
	__u64 bytes;
	__u64 first_seen; // jiffies (bpf_jiffies64: inlined, ~1 ns; a clock read costs ~10)
	__u64 last_seen;  // jiffies, of the last write-back; see the cache for later
	__u64 id;         // bpf_ktime_get_ns at insert: tells records of one key apart
	__u32 tcp_flags;  // OR of the flags seen
	__u32 pad;
};

// The counts of a flow not yet written back to its record.
struct flow_delta {
	__u64 packets;
	__u64 segments;
	__u64 bytes;
	__u64 last_seen; // jiffies
	__u32 tcp_flags;
	__u32 pad;
};

// A per-CPU, direct-mapped flow cache entry: the fast path. A packet whose
// flow is in its CPU's cache costs two inlined array lookups, a key
// compare and three adds, for its flow and its port; no hash map and no
// port slot is touched.
// Two cache lines: key and id in the first, what a hit updates in the second.
struct flow_cache_entry {
	struct flow_key key;
	__u64 id;  // id of the record the delta belongs to; 0 = empty
	__u32 gen; // value of nsflow_gen when the record was last seen to exist
	// seq is odd while the entry is being written back (its delta added
	// to the record and the port, then cleared) and refilled: a reader
	// that sees it odd cannot tell where the delta is, and reads again.
	// gen and seq share an aligned 8-byte word (see seq_bump).
	__u32 seq;
	struct flow_delta d;
	// hold is set (a count) by user space while it reads the entry's flow
	// or the ports: a held entry is neither written back nor replaced, and
	// a packet that would have done either counts straight into its record
	// and its port instead, so that a reader is never starved by
	// write-backs.
	__u32 hold;
	// The port's counter the delta also belongs to (counter_index), and
	// the claim of the port's slot it goes to at write-back; claim 0: the
	// port has no slot, and each packet counts in its port at once.
	__u32 port_counter;
	__u32 port_claim;
} __attribute__((aligned(128)));

#define FLOW_CACHE 1024

// What could not be recorded, in packets; the port counters still count a
// packet whose flow did not fit.
struct loss {
	__u64 flow_full; // flow table full: counted per port, not as a flow
	__u64 port_full; // port table full: counted nowhere else
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct port_key);
	__type(value, struct port_stats);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsflow_ports SEC(".maps");

// The per-CPU tables (port slots, flow cache) are plain arrays, CPU-major:
// CPU c's entry i is at c * SIZE + i, and user space sets max_entries to
// SIZE times the possible CPUs. A per-CPU array would cost a dependent
// load (the element's per-CPU pointer) on every lookup; an array lookup is
// an address computation. Mmapable, so that entries start page-aligned and
// the alignment of the value types holds.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct port_slot);
	__uint(max_entries, PORT_SLOTS); // x possible CPUs, set at load
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsflow_port_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsflow_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct flow_cache_entry);
	__uint(max_entries, FLOW_CACHE); // x possible CPUs, set at load
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsflow_flow_cache SEC(".maps");

// The deletion generation: user space bumps it after deleting records, so
// that each cache entry checks once that its record still exists.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsflow_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct loss);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} nsflow_loss SEC(".maps");

// The few kernel-internal fields the programs read, relocated against the
// running kernel's BTF (CO-RE), so no vmlinux.h is needed.
#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
struct net {
	__u64 net_cookie;
};
typedef struct {
	struct net *net;
} possible_net_t;
struct net_device {
	possible_net_t nd_net;
};
struct sk_buff {
	struct net_device *dev;
	unsigned char *head;
	unsigned char *data;
	__u32 end; // sk_buff_data_t: an offset from head on 64-bit kernels
	__u16 transport_header;
	__u16 inner_transport_header;
};
struct skb_shared_info {
	__u32 gso_type;
};
#pragma clang attribute pop

// SKB_GSO_* bits (linux/skbuff.h), unchanged since Linux 4.18.
#define SKB_GSO_TCPV4 (1 << 0)
#define SKB_GSO_TCPV6 (1 << 4)
#define SKB_GSO_UDP_L4 (1 << 17)
// GRE, GRE_CSUM, IPXIP4, IPXIP6, UDP_TUNNEL, UDP_TUNNEL_CSUM: the inner
// packet is what is segmented.
#define SKB_GSO_TUNNEL (0x3f << 6)

extern void *bpf_cast_to_kern_ctx(void *) __ksym;

// netns_cookie is the cookie of the namespace of the device the packet is
// on. bpf_get_netns_cookie(skb) is no substitute: it reads the socket's
// namespace and, without a socket (forwarded, received), the initial one.
static __always_inline __u64 netns_cookie(struct __sk_buff *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);

	return skb->dev->nd_net.net->net_cookie;
}

// gso_segs_unset counts the segments of a GSO packet whose gso_segs the
// kernel has not computed (0): one from an untrusted source, a tap or a
// packet socket with a virtio-net header (a VM's, a sandbox's), whose
// segments are computed only when it is segmented (SKB_GSO_DODGY); or
// such a packet after a tunnel encapsulated it. It counts as
// segmentation does: the bytes after the transport header (and the TCP
// or UDP header, for TCP and UDP segmentation) in gso_size pieces; in a
// tunnel, after the inner ones. Rare: not inlined.
static __noinline __u64 gso_segs_unset(struct __sk_buff *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);
	__u32 size = ctx->gso_size, gso_type, hdr;
	unsigned char *head = skb->head;
	__u16 th;

	if (!size)
		return 1;
	struct skb_shared_info *si = (void *)(head + skb->end);
	if (bpf_probe_read_kernel(&gso_type, sizeof(gso_type), &si->gso_type))
		return 1;
	th = gso_type & SKB_GSO_TUNNEL ? skb->inner_transport_header : skb->transport_header;
	if (th == 0xffff) // not set
		return 1;
	// The frame starts at skb->data (the MAC header) here.
	hdr = th - (__u32)(skb->data - head);
	if (gso_type & (SKB_GSO_TCPV4 | SKB_GSO_TCPV6)) {
		__u8 doff;

		if (bpf_skb_load_bytes(ctx, hdr + 12, &doff, 1))
			return 1;
		hdr += (doff >> 4) * 4;
	} else if (gso_type & SKB_GSO_UDP_L4) {
		hdr += 8;
	}
	if (ctx->len <= hdr)
		return 1;
	return (ctx->len - hdr + size - 1) / size;
}

// Zero value for inserting a port: too big for the 512-byte stack.
static const struct port_stats zero_port;

// What parsing found. Addresses are kept as the packet has them, in whole
// words (IPv4 in the low four bytes of [0]), so that the flow key is built
// with 8-byte stores: narrower stores read back as words stall the CPU
// (failed store-to-load forwarding).
struct pkt {
	__u64 src[2];
	__u64 dst[2];
	__u32 ports; // sport | dport << 16, host order; ICMP: type | code << 16
	__u8 family; // FAM_*
	__u8 l4;     // L4_*
	__u8 proto;  // IP protocol, or the last IPv6 next header reached
	__u8 tcp_flags;
};

enum parse_result { PARSE_OK, PARSE_TRUNCATED };

static __always_inline __u8 l4_class(__u8 family, __u8 proto)
{
	switch (proto) {
	case IPPROTO_TCP:
		return L4_TCP;
	case IPPROTO_UDP:
		return L4_UDP;
	case IPPROTO_ICMP:
		return family == FAM_IPV4 ? L4_ICMP : L4_OTHER;
	case IPPROTO_ICMPV6:
		return family == FAM_IPV6 ? L4_ICMP : L4_OTHER;
	}
	return L4_OTHER;
}

// The ports of an ICMP flow whose type and code were not read (a later
// fragment, a cut header): 0/0 would be Echo Reply.
#define ICMP_UNKNOWN 0xffffffff

// set_proto sets the IP protocol and its class.
static __always_inline void set_proto(struct pkt *p, __u8 family, __u8 proto)
{
	p->proto = proto;
	p->l4 = l4_class(family, proto);
	p->ports = p->l4 == L4_ICMP ? ICMP_UNKNOWN : 0;
}

// parse_l4 fills in ports (TCP, UDP, SCTP; ICMP type/code) and TCP flags.
static __always_inline int parse_l4(void *data, void *end, __u32 off, struct pkt *p)
{
	__u8 *b = data + off;

	if (off > PARSE_MAX)
		return PARSE_OK;
	switch (p->l4) {
	case L4_TCP:
		if ((void *)(b + 14) > end)
			return PARSE_TRUNCATED;
		p->tcp_flags = b[13];
		break;
	case L4_UDP:
		if ((void *)(b + 4) > end)
			return PARSE_TRUNCATED;
		break;
	case L4_ICMP:
		if ((void *)(b + 2) > end)
			return PARSE_TRUNCATED;
		p->ports = b[0] | (__u32)b[1] << 16;
		return PARSE_OK;
	default:
		// SCTP has ports where UDP has them (counted as other L4).
		if (p->proto != IPPROTO_SCTP)
			return PARSE_OK;
		if ((void *)(b + 4) > end)
			return PARSE_TRUNCATED;
		break;
	}
	p->ports = bpf_ntohs(*(__be16 *)b) | (__u32)bpf_ntohs(*(__be16 *)(b + 2)) << 16;
	return PARSE_OK;
}

static __always_inline int parse_ipv4(void *data, void *end, __u32 off, struct pkt *p)
{
	struct iphdr *ip = data + off;

	if ((void *)(ip + 1) > end)
		return PARSE_TRUNCATED;
	if (ip->version != 4 || ip->ihl < 5)
		return PARSE_OK; // not IPv4 whatever the ethertype says: other
	__u32 hlen = ip->ihl * 4;
	if (data + off + hlen > end)
		return PARSE_TRUNCATED;

	p->family = FAM_IPV4;
	set_proto(p, FAM_IPV4, ip->protocol);
	p->src[0] = ip->saddr;
	p->dst[0] = ip->daddr;
	// A later fragment carries no L4 header: its flow has no ports.
	if (ip->frag_off & bpf_htons(0x1fff))
		return PARSE_OK;
	off += hlen;
	// An authentication header (IPsec AH, not encrypted) is followed, as
	// over IPv6, to the protocol it carries.
	if (ip->protocol == IPPROTO_AH) {
		__u8 *h = data + off;

		if ((void *)(h + 2) > end)
			return PARSE_TRUNCATED;
		set_proto(p, FAM_IPV4, h[0]);
		off += ((__u32)h[1] + 2) * 4;
	}
	return parse_l4(data, end, off, p);
}

static __always_inline int parse_ipv6(void *data, void *end, __u32 off, struct pkt *p)
{
	struct ipv6hdr *ip6 = data + off;

	if ((void *)(ip6 + 1) > end)
		return PARSE_TRUNCATED;
	if (ip6->version != 6)
		return PARSE_OK;

	p->family = FAM_IPV6;
	// Word loads: the packet need not be 8-byte aligned, nor need it be on
	// the architectures nsflow runs on.
	p->src[0] = *(__u64 *)((void *)ip6 + 8);
	p->src[1] = *(__u64 *)((void *)ip6 + 16);
	p->dst[0] = *(__u64 *)((void *)ip6 + 24);
	p->dst[1] = *(__u64 *)((void *)ip6 + 32);
	__u8 next = ip6->nexthdr;
	off += sizeof(*ip6);

	// Walk the extension headers; proto ends as the last header reached.
	// Not unrolled: the program's size is a per-packet cost (i-cache).
#pragma clang loop unroll(disable)
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		__u8 *h = data + off;
		__u32 len;

		p->proto = next;
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
		    next == IPPROTO_DSTOPTS) {
			if ((void *)(h + 2) > end)
				return PARSE_TRUNCATED;
			len = ((__u32)h[1] + 1) * 8;
		} else if (next == IPPROTO_AH) {
			if ((void *)(h + 2) > end)
				return PARSE_TRUNCATED;
			len = ((__u32)h[1] + 2) * 4;
		} else if (next == IPPROTO_FRAGMENT) {
			if ((void *)(h + 8) > end)
				return PARSE_TRUNCATED;
			// A later fragment carries no L4 header.
			if (*(__be16 *)(h + 2) & bpf_htons(0xfff8)) {
				set_proto(p, FAM_IPV6, h[0]);
				return PARSE_OK;
			}
			len = 8;
		} else {
			set_proto(p, FAM_IPV6, next);
			return parse_l4(data, end, off, p);
		}
		next = h[0];
		off += len;
		if (off > PARSE_MAX)
			break;
	}
	// Too many extension headers to follow: an IPv6 flow of unknown L4.
	set_proto(p, FAM_IPV6, next);
	return PARSE_OK;
}

// parse classifies the frame in [data, end). PARSE_TRUNCATED means a
// header ended early, either because the frame is truncated or because the
// rest is not in the linear part of the skb.
static __always_inline int parse(void *data, void *end, struct pkt *p)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);

	__builtin_memset(p, 0, sizeof(*p));
	p->family = FAM_OTHER;
	p->l4 = L4_OTHER;
	if ((void *)(eth + 1) > end)
		return PARSE_TRUNCATED;
	__be16 proto = eth->h_proto;

	// Up to two in-band tags (802.1ad outer, 802.1Q inner). A tag the
	// driver took out of the frame is in skb metadata and not seen here.
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) &&
		    proto != bpf_htons(ETH_P_8021AD))
			break;
		if (data + off + 4 > end)
			return PARSE_TRUNCATED;
		proto = *(__be16 *)(data + off + 2);
		off += 4;
	}

	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4(data, end, off, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6(data, end, off, p);
	return PARSE_OK;
}

// parse_slow is parse for every frame parse_fast leaves: VLAN tags, IPv4
// options and fragments, IPv6 extension headers, other protocols, and
// headers beyond the linear part (rare: GRO may leave them in frags),
// which it pulls in and parses again, once. Pulling moves no packet data
// the stack could see, so the packet is unchanged. Not inlined, so that
// its code stays out of the way of the common case's.
static __noinline void parse_slow(struct __sk_buff *skb, struct pkt *p)
{
#pragma clang loop unroll(disable)
	for (int try = 0; try < 2; try++) {
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;

		int res = parse(data, end, p);
		if (res != PARSE_TRUNCATED || try || skb->len <= (__u32)(end - data))
			break;
		if (bpf_skb_pull_data(skb, skb->len < PULL_MAX ? skb->len : PULL_MAX))
			break;
	}
}

// ports_host turns the 4 bytes of source and destination port, loaded as
// one little-endian word, into sport | dport << 16 in host order.
static __always_inline __u32 ports_host(__u32 w)
{
	return ((w & 0x00ff00ff) << 8) | ((w >> 8) & 0x00ff00ff);
}

// parse_fast classifies the common frame in a few loads: untagged, IPv4
// without options and not a later fragment, or IPv6 without extension
// headers, carrying TCP or UDP, all in the linear part. It gives the same
// result as parse; on any other frame it returns 0 and fills in nothing.
// fast_l4 is parse_fast's L4 step: UDP, or TCP with its flags in the
// linear part; 0 for anything else.
static __always_inline int fast_l4(void *l4h, void *end, __u8 proto, __u8 *l4, __u8 *flags)
{
	if (proto == IPPROTO_UDP) {
		*l4 = L4_UDP;
		return 1;
	}
	if (proto == IPPROTO_TCP && l4h + 14 <= end) {
		*l4 = L4_TCP;
		*flags = *(__u8 *)(l4h + 13);
		return 1;
	}
	return 0;
}

static __always_inline int parse_fast(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u8 l4, flags = 0;

	if (data + ETH_HLEN + sizeof(struct iphdr) + 4 > end)
		return 0;
	__u16 ethertype = *(__u16 *)(data + 12);
	// The two families stay apart, each with its own copy of fast_l4
	// (inlined): merged, the addresses of both live across the L4 step
	// and the common case pays for the spills (1-2 ns a run).
	if (ethertype == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + ETH_HLEN;
		void *l4h = ip + 1; // its ports are within the check above

		if (*(__u8 *)ip != 0x45 || (ip->frag_off & bpf_htons(0x1fff)) ||
		    !fast_l4(l4h, end, ip->protocol, &l4, &flags))
			return 0;
		p->src[0] = ip->saddr;
		p->src[1] = 0;
		p->dst[0] = ip->daddr;
		p->dst[1] = 0;
		p->ports = ports_host(*(__u32 *)l4h);
		p->family = FAM_IPV4;
		p->proto = ip->protocol;
	} else if (ethertype == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		void *l4h = ip6 + 1;

		if (l4h + 4 > end || (*(__u8 *)ip6 >> 4) != 6 ||
		    !fast_l4(l4h, end, ip6->nexthdr, &l4, &flags))
			return 0;
		p->src[0] = *(__u64 *)((void *)ip6 + 8);
		p->src[1] = *(__u64 *)((void *)ip6 + 16);
		p->dst[0] = *(__u64 *)((void *)ip6 + 24);
		p->dst[1] = *(__u64 *)((void *)ip6 + 32);
		p->ports = ports_host(*(__u32 *)l4h);
		p->family = FAM_IPV6;
		p->proto = ip6->nexthdr;
	} else {
		return 0;
	}
	p->l4 = l4;
	p->tcp_flags = flags;
	return 1;
}

static __noinline void count_loss(int port)
{
	__u32 zero = 0;
	struct loss *l = bpf_map_lookup_elem(&nsflow_loss, &zero);

	if (!l)
		return;
	if (port)
		l->port_full++;
	else
		l->flow_full++;
}

// port_slot_index mixes cookie and ifindex (Fibonacci hashing); the Go
// side computes the same (portSlotIndex).
static __always_inline __u32 port_slot_index(__u64 cookie, __u32 ifindex)
{
	__u64 h = (cookie ^ ((__u64)ifindex << 32)) * 0x9E3779B97F4A7C15ULL;

	return (__u32)(h >> 54) & (PORT_SLOTS - 1);
}

static __always_inline void add(struct counter *c, __u64 packets, __u64 segs, __u64 len)
{
	c->packets += packets;
	c->segments += segs;
	c->bytes += len;
}

// count_port_slow counts a packet of a port without a slot of its own
// (not attached by this datapath, or its slot taken) in the port's entry
// in the hash map, inserted on first use.
static __noinline void count_port_slow(__u64 cookie, __u32 ifindex, __u32 i, __u64 segs, __u64 len)
{
	struct port_key pk = { .netns_cookie = cookie, .ifindex = ifindex };
	struct port_stats *ps;

	if (i >= COUNTERS) { // cannot happen (counter_index); the verifier must see it
		count_loss(1);
		return;
	}
	ps = bpf_map_lookup_elem(&nsflow_ports, &pk);
	if (!ps) {
		bpf_map_update_elem(&nsflow_ports, &pk, &zero_port, BPF_NOEXIST);
		ps = bpf_map_lookup_elem(&nsflow_ports, &pk);
	}
	if (!ps) {
		count_loss(1);
		return;
	}
	add(&((struct counter *)ps->c)[i], 1, segs, len);
}

// port_line returns the line of the port's slot on this CPU that holds
// counter i, or NULL when the slot is not the port's. i must be a
// counter_index.
static __always_inline struct port_line *port_line(__u64 cookie, __u32 ifindex, __u32 i, __u32 cpu)
{
	__u32 idx = cpu * PORT_SLOTS + port_slot_index(cookie, ifindex);
	struct port_slot *slot = bpf_map_lookup_elem(&nsflow_port_slots, &idx);

	if (!slot)
		return NULL;
	struct port_line *l = &slot->l[i / 2];
	if (l->netns_cookie != cookie || l->ifindex != ifindex)
		return NULL;
	return l;
}

// count_port counts the packet in counter i of its port: in the port's
// slot, or else in the hash map.
static __always_inline void count_port(__u64 cookie, __u32 ifindex, __u32 i, __u32 cpu,
				       __u64 segs, __u64 len)
{
	struct port_line *l = port_line(cookie, ifindex, i, cpu);

	if (l) {
		add(&l->c[i & 1], 1, segs, len);
		return;
	}
	count_port_slow(cookie, ifindex, i, segs, len);
}

// The flow key as the fast path builds, hashes and compares it: seven words.
union flow_key_words {
	struct flow_key k;
	__u64 w[7];
};

// flow_cache_index hashes the key's words in three independent lanes
// (cheap on the fast path); the Go side computes the same. It leaves out
// the netns cookie (word 0), the one word that comes from a likely cache
// miss, so that the entry's address does not wait for it; the key
// compare still includes it.
static __always_inline __u32 flow_cache_index(const union flow_key_words *k)
{
	const __u64 *w = k->w;
	__u64 h = (w[3] ^ w[6]) * 0x9E3779B97F4A7C15ULL +
		  (w[1] ^ w[4]) * 0xC2B2AE3D27D4EB4FULL +
		  (w[2] ^ w[5]) * 0x165667B19E3779F9ULL;

	return (__u32)(h >> 54) & (FLOW_CACHE - 1);
}

static __always_inline int flow_key_eq(const struct flow_key *a, const union flow_key_words *b)
{
	const __u64 *x = (const __u64 *)a, *y = b->w;

	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) |
		(x[4] ^ y[4]) | (x[5] ^ y[5]) | (x[6] ^ y[6])) == 0;
}

// barrier keeps the compiler from moving memory accesses across it: the
// stores of a write-back must reach memory in program order.
#define barrier() asm volatile("" ::: "memory")

// seq_bump adds one to a cache entry's seq with a fetching atomic, which
// the JITs make fully ordered (on arm64 as on x86), so that what is
// written between two bumps (a write-back's adds and the delta's
// clearing, a new flow's entry) is seen between them. clang emits the
// fetching form only for 8-byte atomics whose result is used: seq is the
// upper half of the aligned word it shares with gen (the programs are
// little-endian), and the add leaves gen as it is.
static __always_inline void seq_bump(struct flow_cache_entry *e)
{
	__u64 old = __sync_fetch_and_add((__u64 *)&e->gen, 1ULL << 32);

	asm volatile("" ::"r"(old));
}

// record_add adds counts to a record (shared by CPUs: atomic adds).
static __always_inline void record_add(struct flow_value *r, const struct flow_delta *d)
{
	__sync_fetch_and_add(&r->packets, d->packets);
	__sync_fetch_and_add(&r->segments, d->segments);
	__sync_fetch_and_add(&r->bytes, d->bytes);
	if (d->tcp_flags)
		__sync_fetch_and_or(&r->tcp_flags, d->tcp_flags);
	if (d->last_seen > r->last_seen)
		r->last_seen = d->last_seen;
}

// write_back adds a cache entry's delta to its record and its port, and
// empties the entry; the caller brackets it with seq_bump. If the record
// was deleted (or replaced) meanwhile, the delta belonged to the deleted
// record and goes with it; if the port's slot was freed (its counts
// deleted, with this delta in their last read), the same.
static __always_inline void write_back(struct flow_cache_entry *e, __u32 cpu)
{
	if (e->id && e->d.packets) {
		struct flow_value *r = bpf_map_lookup_elem(&nsflow_flows, &e->key);
		if (r && r->id == e->id)
			record_add(r, &e->d);
		if (e->port_claim) {
			__u32 i = e->port_counter;

			// Written by this program only; the verifier needs the bound.
			asm volatile("if %[i] < %[n] goto +1; %[i] = 0" : [i] "+w"(i) : [n] "i"(COUNTERS));
			struct port_line *l = port_line(e->key.netns_cookie, e->key.ifindex, i, cpu);
			if (l && l->claim == e->port_claim)
				add(&l->c[i & 1], e->d.packets, e->d.segments, e->d.bytes);
		}
	}
	e->id = 0;
	__builtin_memset(&e->d, 0, sizeof(e->d));
}

// flow_slow is the slow path: the packet's flow is not in this CPU's
// cache, or the cache entry must check that its record still exists. d
// is the packet's own count, i its port's counter (five arguments at
// most: the CPU is read again). Not inlined, like every
// rare path, so that the common case's code stays short and together.
static __noinline void flow_slow(struct flow_cache_entry *e, union flow_key_words *k,
				 struct flow_delta *d, __u32 gen, __u32 i)
{
	__u64 now = d->last_seen, cookie = k->w[0];
	__u32 ifindex = k->k.ifindex, cpu = bpf_get_smp_processor_id();
	int held = *(volatile __u32 *)&e->hold != 0;

	// The entry is rewritten between two seq bumps: a reader never sees
	// half of it, nor a delta both in the entry and where it went.
	if (!held) {
		seq_bump(e); // odd
		barrier();
		write_back(e, cpu);
	}

	struct flow_value *r = bpf_map_lookup_elem(&nsflow_flows, &k->k);
	if (!r) {
		struct flow_value nv = {
			.first_seen = now,
			.last_seen = now,
			.id = bpf_ktime_get_ns(),
		};
		long err = bpf_map_update_elem(&nsflow_flows, &k->k, &nv, BPF_NOEXIST);
		// EEXIST: another CPU inserted it just now; use that record.
		if (!err || err == -17 /* EEXIST */)
			r = bpf_map_lookup_elem(&nsflow_flows, &k->k);
	}
	if (!r || held) {
		if (r)
			record_add(r, d);
		else
			count_loss(0);
		count_port(cookie, ifindex, i, cpu, d->segments, d->bytes);
		if (!held) {
			barrier();
			seq_bump(e); // even: empty
		}
		return;
	}
	// The port's counts ride in the entry when the port has a slot.
	struct port_line *l = port_line(cookie, ifindex, i, cpu);
	__u32 claim = l ? l->claim : 0;
	if (!claim)
		count_port(cookie, ifindex, i, cpu, d->segments, d->bytes);
	__builtin_memcpy(&e->key, &k->k, sizeof(k->k));
	e->id = r->id;
	e->gen = gen;
	e->d = *d;
	e->port_counter = i;
	e->port_claim = claim;
	barrier();
	seq_bump(e); // even: done
}

static __always_inline void count_flow(union flow_key_words *k, __u8 tcp_flags,
				       __u64 segs, __u64 len, __u32 i, __u32 cpu)
{
	__u32 zero = 0;
	__u32 idx = cpu * FLOW_CACHE + flow_cache_index(k);
	struct flow_cache_entry *e = bpf_map_lookup_elem(&nsflow_flow_cache, &idx);
	__u32 *gen = bpf_map_lookup_elem(&nsflow_gen, &zero);
	__u64 now = bpf_jiffies64();

	if (!e || !gen) { // cannot happen: the tables cover every possible CPU
		count_loss(0);
		count_port(k->w[0], k->k.ifindex, i, cpu, segs, len);
		return;
	}
	if (e->id && e->gen == *gen && flow_key_eq(&e->key, k)) {
		e->d.packets++;
		e->d.segments += segs;
		e->d.bytes += len;
		e->d.last_seen = now;
		e->d.tcp_flags |= tcp_flags;
		if (!e->port_claim)
			count_port(k->w[0], k->k.ifindex, i, cpu, segs, len);
		return;
	}
	struct flow_delta d = {
		.packets = 1, .segments = segs, .bytes = len, .last_seen = now, .tcp_flags = tcp_flags,
	};
	flow_slow(e, k, &d, *gen, i);
}

static __always_inline int account(struct __sk_buff *skb, __u8 dir)
{
	// The looped-back copy of a packet this host sent passes the sending
	// interface's ingress without a MAC header; the interface's
	// statistics do not count it, and neither do we.
	if (skb->pkt_type == PACKET_LOOPBACK)
		return TC_ACT_UNSPEC;

	// First, so that its likely cache miss overlaps the parsing.
	__u64 cookie = netns_cookie(skb);
	__u32 ifindex = skb->ifindex;
	struct pkt p;

	if (!parse_fast(skb, &p))
		parse_slow(skb, &p);

	// gso_segs is 0 for a packet that is not GSO, and for a GSO packet
	// whose segments the kernel has yet to count.
	__u64 segs = skb->gso_segs;
	if (segs == 0)
		segs = skb->gso_size ? gso_segs_unset(skb) : 1;
	__u64 len = skb->len;

	__u32 cpu = bpf_get_smp_processor_id();
	__u32 i = counter_index(dir, p.family, p.l4);

	if (p.family == FAM_OTHER) {
		count_port(cookie, ifindex, i, cpu, segs, len);
		return TC_ACT_UNSPEC;
	}
	union flow_key_words k = {
		.w = {
			cookie,
			ifindex | (__u64)dir << 32 |
				(__u64)(p.family == FAM_IPV4 ? 4 : 6) << 40 |
				(__u64)p.proto << 48,
			p.ports,
			p.src[0], p.src[1], p.dst[0], p.dst[1],
		},
	};
	count_flow(&k, p.tcp_flags, segs, len, i, cpu);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int nsflow_ingress(struct __sk_buff *skb)
{
	return account(skb, DIR_INGRESS);
}

SEC("tc")
int nsflow_egress(struct __sk_buff *skb)
{
	return account(skb, DIR_EGRESS);
}

char __license[] SEC("license") = "Dual BSD/GPL";
