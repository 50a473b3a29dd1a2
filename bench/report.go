package bench

import (
	"time"

	"github.com/nsflow/nsflow/traffic"
)

// SchemaVersion is the version of the JSON report; it changes only when a
// field is removed or changes meaning.
const SchemaVersion = 1

// Report is the result of one bench run. Its JSON form (-o json) is the
// stable interface for scripts; see the README for every field.
type Report struct {
	SchemaVersion int       `json:"schema_version"`
	Started       time.Time `json:"started"`
	Host          Host      `json:"host"`
	Settings      Settings  `json:"settings"`
	// Topology is the name of the topology measured (built for the run
	// under a random prefix, or the file's).
	Topology string `json:"topology"`
	Cases    []Case `json:"cases"`
	// Iperf3 holds the sanity measurements, empty when iperf3 is not
	// installed.
	Iperf3 []Iperf3 `json:"iperf3"`
	// Differences counts reconciliation checks, over all cases, whose two
	// sides did not match.
	Differences int `json:"differences"`
	// Complete is false in the report of a run that stopped early
	// (Ctrl-C, an error): it holds the cases finished by then.
	Complete bool `json:"complete"`
}

// Host describes where the run happened.
type Host struct {
	Kernel string `json:"kernel"`
	CPUs   int    `json:"cpus"`
	// AttachMode is how nsflow's programs were attached (tcx or tc).
	AttachMode string `json:"attach_mode"`
}

// Settings echo what was asked for, after defaults.
type Settings struct {
	Topology string          `json:"topology"` // "built" or the file used
	Paths    []Path          `json:"paths"`
	Pairs    []int           `json:"pairs"`
	Streams  int             `json:"streams"`
	Duration time.Duration   `json:"duration_ns"`
	Protos   []traffic.Proto `json:"protos"`
	// Size is the size the run used: the Ethernet frame size for UDP
	// (FCS included, so 64 means the classic 64-byte packet), the write
	// size for TCP; --size when given, else the protocol's default. 0
	// only when two protocols ran on different defaults: Sizes has each.
	// Each case has its own payload and frame.
	Size int `json:"size"`
	// Sizes is the size each protocol of the run used.
	Sizes  map[traffic.Proto]int `json:"sizes"`
	Rounds int                   `json:"rounds"`
	// Slices is --slices: instrumented slices per case for SliceRatio.
	Slices      int           `json:"slices"`
	SliceLength time.Duration `json:"slice_length_ns"`
	// HookCost is --hook-cost: cases have a HookRatio.
	HookCost bool `json:"hook_cost"`
}

// Case is one path, protocol and number of pairs, measured Rounds times
// each way.
type Case struct {
	Name  string        `json:"name"` // path/proto/pairs, e.g. veth/udp/2
	Path  Path          `json:"path"`
	Proto traffic.Proto `json:"proto"`
	Pairs int           `json:"pairs"`
	// Streams per pair; Payload is the UDP payload or the TCP write size
	// in bytes (UDP: the first pair's; an IPv6 pair's is 20 bytes less,
	// for the same frame); Frame the UDP frame size with FCS (0 for TCP).
	Streams int `json:"streams"`
	Payload int `json:"payload"`
	Frame   int `json:"frame"`

	Uninstrumented Summary `json:"uninstrumented"`
	Instrumented   Summary `json:"instrumented"`
	// Ratio is the median over rounds of instrumented over uninstrumented
	// throughput, each round's two samples taken back to back: 1 is no
	// overhead. Pairing cancels the drift of a shared machine's speed
	// between rounds, which a ratio of the two medians would keep.
	Ratio float64 `json:"ratio"`
	// SliceRatio is the overhead measured finely: instrumented slices of
	// SliceLength, each over the mean of the uninstrumented slices just
	// before and after it, all under one continuous generator run. The
	// machine's speed hardly drifts within a slice's neighbourhood, so it
	// cancels the drift within a run that Ratio keeps; between runs it
	// still moves with how the generator's threads share the CPUs.
	SliceRatio SliceRatio `json:"slice_ratio"`
	// HookRatio, with --hook-cost, is SliceRatio of a no-op tc program on
	// the same hooks, measured in slices between nsflow's: the share of
	// the overhead that any tc program pays there (null without it).
	HookRatio *SliceRatio `json:"hook_ratio"`
	BPF       BPFCost     `json:"bpf"`
	// Differences counts this case's checks that did not match.
	Differences int      `json:"differences"`
	Samples     []Sample `json:"samples"`
}

// Overhead is the case's instrumented/uninstrumented ratio: the slices'
// median, or the rounds' when no slice could be measured.
func (c Case) Overhead() float64 {
	if c.SliceRatio.Median > 0 {
		return c.SliceRatio.Median
	}
	return c.Ratio
}

// SliceRatio summarizes the slices' ratios: median and quartiles.
type SliceRatio struct {
	Median float64 `json:"median"`
	Q25    float64 `json:"q25"`
	Q75    float64 `json:"q75"`
	// Ratios are the instrumented slices' ratios in the order measured.
	Ratios []float64 `json:"ratios"`
}

// Summary is the median and range over a case's samples of one mode.
type Summary struct {
	Gbps Spread `json:"gbps"`
	Mpps Spread `json:"mpps"`
	CPU  CPU    `json:"cpu"` // medians
}

// Spread is a median with the smallest and largest sample.
type Spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// BPFCost is nsflow's datapath time from the kernel's BPF run-time
// statistics, over one extra instrumented sample of up to 2 s taken with
// the statistics on (they add some ns per run, so the samples the ratio
// comes from run without them).
type BPFCost struct {
	Runs      uint64  `json:"runs"`
	RunTimeNs uint64  `json:"run_time_ns"`
	NsPerRun  float64 `json:"ns_per_run"`
	// NsPerPacket is the run time over all hooks on the path divided by
	// the packets (skbs) the server's interface received: the datapath's
	// cost per packet end to end.
	NsPerPacket float64 `json:"ns_per_packet"`
	// Sample is the cost sample itself, reconciled like the others.
	Sample *Sample `json:"sample"`
}

// Sample is one measurement of a case.
type Sample struct {
	Round        int           `json:"round"`
	Instrumented bool          `json:"instrumented"`
	Gbps         float64       `json:"gbps"`
	Mpps         float64       `json:"mpps"`
	Elapsed      time.Duration `json:"elapsed_ns"`
	// The generator's counts summed over pairs (see traffic.Result).
	Sent      traffic.Counts `json:"sent"`
	Received  traffic.Counts `json:"received"`
	Lost      uint64         `json:"lost"`
	Reordered uint64         `json:"reordered"`
	CPU       CPU            `json:"cpu"`
	// Kernel is the change of each interface's kernel statistics.
	Kernel []KernelDelta `json:"kernel"`
	Checks []Check       `json:"checks"`
}

// KernelDelta is one interface's kernel statistics over a sample.
type KernelDelta struct {
	Iface
	Rx        traffic.Counts `json:"rx"`
	Tx        traffic.Counts `json:"tx"`
	RxDropped uint64         `json:"rx_dropped"`
	TxDropped uint64         `json:"tx_dropped"`
}

// Check compares two counts of the same packets from two independent
// sources. Bytes are compared only where both sides count the same bytes.
type Check struct {
	Subject      string         `json:"subject"` // what is counted, e.g. "vc1/eth0 rx"
	Left         string         `json:"left"`    // source names, e.g. "nsflow", "kernel"
	Right        string         `json:"right"`
	LeftCount    traffic.Counts `json:"left_count"`
	RightCount   traffic.Counts `json:"right_count"`
	PacketsDiff  int64          `json:"packets_diff"` // left - right
	BytesDiff    int64          `json:"bytes_diff"`
	ComparePkts  bool           `json:"compare_packets"`
	CompareBytes bool           `json:"compare_bytes"`
	OK           bool           `json:"ok"`
	Note         string         `json:"note,omitempty"`
}

func (s Sample) differences() int {
	n := 0
	for _, c := range s.Checks {
		if !c.OK {
			n++
		}
	}
	return n
}

func newCheck(subject, left, right string, l, r traffic.Counts, pkts, bytes bool) Check {
	c := Check{Subject: subject, Left: left, Right: right, LeftCount: l, RightCount: r,
		PacketsDiff: int64(l.Packets) - int64(r.Packets), BytesDiff: int64(l.Bytes) - int64(r.Bytes),
		ComparePkts: pkts, CompareBytes: bytes}
	if !pkts {
		c.PacketsDiff = 0
	}
	if !bytes {
		c.BytesDiff = 0
	}
	c.OK = c.PacketsDiff == 0 && c.BytesDiff == 0
	return c
}

// Iperf3 is iperf3's figure on the first pair of a path, uninstrumented,
// next to the built-in generator's, each the median of Rounds runs taken
// alternately on the same pair for the same whole number of seconds.
type Iperf3 struct {
	Path      Path          `json:"path"`
	Proto     traffic.Proto `json:"proto"`
	Rounds    int           `json:"rounds"`
	Gbps      float64       `json:"gbps"`
	Mpps      float64       `json:"mpps"`
	Generator float64       `json:"generator_gbps"`
	// Ratio is generator over iperf3 throughput.
	Ratio float64 `json:"ratio"`
	Error string  `json:"error,omitempty"`
}
