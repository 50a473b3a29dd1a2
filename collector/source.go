package collector

// Source is what the collectors read: the agent implements it. Every call
// happens at scrape time, possibly concurrently.
type Source interface {
	Ports() ([]PortSample, error)
	Flows() (*FlowSummary, error)
	Namespaces() []NetnsInfo
	Self() SelfSample
}

// PortSample is the traffic counted on one attached port, for one
// protocol family ("ipv4", "ipv6" or "other"). Receive is what entered the
// namespace through the interface (tc ingress), transmit what left it.
type PortSample struct {
	Netns, Interface, Family       string
	ReceiveBytes, ReceivePackets   uint64
	TransmitBytes, TransmitPackets uint64
}

// FlowSummary is everything derived from one walk of the flow table.
type FlowSummary struct {
	Pairs     []PairSample
	PortPairs []PortPairSample
	Top       []TopFlowSample
	Table     FlowTableSample
	// Violations are isolation violations, when the source classifies them.
	Violations []Violation
}

// PairSample counts the traffic from one namespace to another, each packet
// once (see the agent's attribution rule).
type PairSample struct {
	Src, Dst, Protocol string
	Bytes, Packets     uint64
}

// PortPairSample is PairSample broken down by destination port ("other"
// for ports beyond the per-pair limit, "none" for protocols without ports).
type PortPairSample struct {
	Src, Dst, Protocol, Port string
	Bytes, Packets           uint64
}

// TopFlowSample is one of the largest live flows.
type TopFlowSample struct {
	Src, Dst, Protocol string
	SrcAddr, DstAddr   string
	SrcPort, DstPort   string
	Bytes              uint64
}

// FlowTableSample describes the kernel flow table.
type FlowTableSample struct {
	Entries, Capacity int
	// Evictions counts flows the agent removed from the table (their
	// counts are kept in the pair aggregates).
	Evictions uint64
	// OverflowPackets counts packets not recorded per flow because the
	// table was full.
	OverflowPackets uint64
}

// NetnsInfo maps a namespace label to what identifies it on the host.
type NetnsInfo struct {
	Netns, Inode, Path, Pids, Comm string
}

// SelfSample is the agent's own state.
type SelfSample struct {
	// AttachedPrograms counts attached tc programs by mode ("tcx", "tc").
	AttachedPrograms map[string]int
	AttachErrors     uint64
	// DiscoveryEvents counts events by object ("netns", "link",
	// "address") and event ("add", "remove", ...).
	DiscoveryEvents map[DiscoveryKey]uint64
}

// DiscoveryKey labels one discovery event counter.
type DiscoveryKey struct{ Object, Event string }
