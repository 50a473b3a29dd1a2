package demo

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nsflow/nsflow/collector"
	"github.com/nsflow/nsflow/internal/english"
	"github.com/nsflow/nsflow/traffic"
	"github.com/nsflow/nsflow/verify"
)

// FlowCount compares one generated flow with what the agent counted.
type FlowCount struct {
	// Src and Dst are the client's and the server's namespaces.
	Src, Dst string
	Port     uint16
	// Loopback flows never cross an observed port.
	Loopback bool
	// Result is the generator's own count.
	Result traffic.Result
	// Counted is the agent's nsflow_netns_flow_port_packets_total for the
	// flow's namespace pair, protocol and port, read after it stopped.
	Counted uint64
}

// Exact reports whether the agent counted every datagram the generator
// sent, no more and no less. With loss, a datagram may be lost before or
// after the observed ports, so then only the range is checked.
func (f FlowCount) Exact() bool {
	r := f.Result
	if r.Lost == 0 {
		return f.Counted == r.Sent.Packets
	}
	return f.Counted >= r.Received.Packets && f.Counted <= r.Sent.Packets
}

// flowSource is the part of the agent countFlows reads.
type flowSource interface {
	Flows() (*collector.FlowSummary, error)
}

// countFlows fills in Counted from the agent's per-port pair counters.
// The agent may answer from a table walk made just before the traffic
// stopped, so it reads again until every flow is exact or wait has passed;
// what is read last stands.
func (s *Summary) countFlows(src flowSource, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		fs, err := src.Flows()
		if err != nil {
			return fmt.Errorf("read the agent's flow counts: %w", err)
		}
		exact := true
		for i := range s.Flows {
			f := &s.Flows[i]
			f.Counted = 0
			for _, p := range fs.PortPairs {
				if p.Src == f.Src && p.Dst == f.Dst && p.Protocol == "udp" && p.Port == strconv.Itoa(int(f.Port)) {
					f.Counted = p.Packets
				}
			}
			exact = exact && (f.Loopback || f.Exact())
		}
		if exact || time.Now().After(deadline) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// verdictOf turns a verify report into the view's verdict. Whether
// isolation holds is verify's own Verdict; the findings list what it
// rests on.
func verdictOf(rep *verify.Report, err error) verdict {
	if err != nil {
		return verdict{Err: err}
	}
	v := verdict{Ran: true, Status: rep.Verdict(), Probes: len(rep.Probes), Checks: len(rep.PortSpace) + len(rep.Stack)}
	for _, p := range rep.Probes {
		if !p.Match() {
			v.Mismatches = append(v.Mismatches, fmt.Sprintf("%s → %s %s (%s): %s", p.From, p.To, p.Port, p.Addr, p.Reason()))
		}
	}
	for _, c := range append(slices.Clone(rep.PortSpace), rep.Stack...) {
		switch {
		case c.Error != "":
			v.Mismatches = append(v.Mismatches, fmt.Sprintf("%s %s: check could not run: %s", c.Netns, c.Kind, c.Error))
		case !c.Pass:
			v.Mismatches = append(v.Mismatches, fmt.Sprintf("%s %s: %s", c.Netns, c.Kind, strings.Join(c.Problems, "; ")))
		}
	}
	if ev := rep.Evidence; ev != nil {
		for _, x := range ev.Violations {
			v.Mismatches = append(v.Mismatches, fmt.Sprintf("eBPF evidence %s → %s: %s delivered where none may arrive", x.Src, x.Dst, english.Count(x.Packets, "packet")))
		}
		if ev.Overflow > 0 {
			v.Mismatches = append(v.Mismatches, fmt.Sprintf("eBPF evidence incomplete: %s not recorded (flow table full)", english.Count(ev.Overflow, "flow")))
		}
	}
	if rep.Load != nil {
		for _, f := range rep.Load.Flows {
			if f.Error != "" {
				v.Mismatches = append(v.Mismatches, fmt.Sprintf("load %s → %s: %s", f.From, f.To, f.Error))
			}
		}
	}
	return v
}

// lines is the summary printed when the demo ends.
func (s *Summary) lines() []string {
	var out []string
	for _, f := range s.Flows {
		r := f.Result
		line := fmt.Sprintf("flow %s→%s udp/%d: generator sent %d, received %d, lost %d; ",
			f.Src, f.Dst, f.Port, r.Sent.Packets, r.Received.Packets, r.Lost)
		switch {
		case f.Loopback:
			line += "loopback, not on an observed port"
		case f.Exact():
			line += fmt.Sprintf("agent counted %d: exact", f.Counted)
		default:
			line += fmt.Sprintf("agent counted %d: MISMATCH", f.Counted)
		}
		out = append(out, line)
	}
	if s.Verify != nil {
		sum := s.Verify.Summary()
		verdicts := map[int]string{0: "isolation holds", 1: "isolation VIOLATED", 2: "isolation could not be checked"}
		out = append(out, fmt.Sprintf("verify: %s: %s, %d disagree with intent, %d could not run, %s failed, %s",
			verdicts[s.Verify.Verdict()], english.Count(sum.Probes, "probe"), sum.Mismatches, sum.ProbeErrors, english.Count(sum.CheckFailed, "check"), english.Count(sum.Violations, "evidence violation")))
	}
	if s.Down != nil {
		out = append(out, fmt.Sprintf("teardown: %s and %s removed; nothing of the demo is left on the host",
			english.Count(s.Down.NamespacesRemoved, "namespace"), english.Count(s.Down.InterfacesRemoved, "host interface")))
		for _, f := range s.Down.Foreign {
			out = append(out, "teardown: left alone, not the demo's: "+f)
		}
	}
	return out
}
