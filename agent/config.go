// Package agent is nsflow's long-lived host agent: it discovers network
// namespaces and their links, attaches the eBPF datapath to every veth and
// bridge port it is allowed to, attributes the counted traffic to namespace
// pairs, keeps counters monotonic across evictions and restarts, and serves
// the result to Prometheus.
package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"time"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/discovery"
)

// Defaults for Config's zero fields.
const (
	DefaultStateFile       = "/run/nsflow/agent-state.json"
	DefaultFlowIdleTimeout = 60 * time.Second
	DefaultTopFlows        = 10
	DefaultTopPorts        = 10
	// unresolvedGrace is how long a flow whose source or destination
	// namespace is not known yet waits (uncounted) for discovery to catch
	// up before it is counted as "unknown" for good.
	unresolvedGrace = 5 * time.Second
)

// UnknownNetns labels an address no discovered namespace owns.
const UnknownNetns = discovery.UnknownLabel

// Filter selects names: included when Include is nil or matches, and
// Exclude is nil or does not match.
type Filter struct {
	Include, Exclude *regexp.Regexp
}

// Match applies the filter.
func (f Filter) Match(name string) bool {
	return (f.Include == nil || f.Include.MatchString(name)) &&
		(f.Exclude == nil || !f.Exclude.MatchString(name))
}

// Config configures an Agent.
type Config struct {
	Logger *slog.Logger
	// PinPath is the bpffs directory for the maps; "" disables pinning
	// (counters then restart at zero with the agent).
	PinPath string
	// StateFile keeps what the kernel maps cannot (counts of evicted
	// flows, port slots) across restarts; used only with PinPath.
	StateFile string
	MaxFlows  uint32
	// AttachMode forces "tcx" or "tc"; "" tries tcx, then tc.
	AttachMode bpf.AttachMode
	// Netns filters namespaces by label, Interface interfaces by name.
	Netns, Interface Filter
	// FlowIdleTimeout evicts flows idle this long (their counts folded
	// into the namespace-pair totals).
	FlowIdleTimeout time.Duration
	// TopFlows bounds nsflow_top_flow_bytes_total, TopPorts the ports per
	// namespace pair with a series of their own; 0 means the default, a
	// negative value none.
	TopFlows, TopPorts int
	// GoneRetention is how long the series of a removed namespace stay
	// (pair totals, port series, violations); 0 means the default, a
	// negative value for ever.
	GoneRetention time.Duration
	Discovery     discovery.WatchConfig
	// Isolation, when set, classifies each flow record seen at a
	// namespace's ingress as a violation of the topology's isolation
	// intent (ok) from namespace src to dst; the agent keeps the counts
	// monotonic like the pair totals and exports them as
	// nsflow_isolation_violation_packets_total. holders names the
	// namespaces that hold an address, as the agent sees them (for the
	// addresses the topology does not declare). The verdict is made once
	// per record, when its attribution is.
	Isolation func(k bpf.FlowKey, netns string, holders func(netip.Addr) []string) (src, dst string, ok bool)
}

func (c *Config) setDefaults() error {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Discovery.Logger == nil {
		c.Discovery.Logger = c.Logger
	}
	if c.StateFile == "" {
		c.StateFile = DefaultStateFile
	}
	if c.FlowIdleTimeout == 0 {
		c.FlowIdleTimeout = DefaultFlowIdleTimeout
	}
	if c.TopFlows == 0 {
		c.TopFlows = DefaultTopFlows
	}
	if c.TopPorts == 0 {
		c.TopPorts = DefaultTopPorts
	}
	if c.GoneRetention == 0 {
		c.GoneRetention = DefaultGoneRetention
	}
	var errs []error
	if c.FlowIdleTimeout < time.Second {
		errs = append(errs, fmt.Errorf("flow idle timeout %v: must be at least 1s", c.FlowIdleTimeout))
	}
	// Negative means none (zero already means the default).
	c.TopFlows, c.TopPorts = max(c.TopFlows, 0), max(c.TopPorts, 0)
	switch c.AttachMode {
	case "", bpf.ModeTCX, bpf.ModeTC:
	default:
		errs = append(errs, fmt.Errorf("attach mode %q: want tcx or tc", c.AttachMode))
	}
	return errors.Join(errs...)
}
