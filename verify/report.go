package verify

import (
	"encoding/json"
	"io"
	"time"
)

// Report is the result of one verify run. Its JSON form is stable.
type Report struct {
	Topology   string        `json:"topology"`
	Namespaces []string      `json:"namespaces"`
	Ports      []string      `json:"ports"`
	Timeout    time.Duration `json:"timeout_ns"`
	// Probes is the whole matrix; Retried counts the probes that were
	// expected to reach and did not, or could not run, on the first try
	// and were probed again (the second result is kept). A probe answered
	// where it must not be is never probed again.
	Probes    []*Probe      `json:"probes"`
	Retried   int           `json:"retried"`
	PortSpace []Check       `json:"port_space"`
	Stack     []Check       `json:"stack"`
	Evidence  *Evidence     `json:"evidence,omitempty"`
	Load      *LoadReport   `json:"load,omitempty"`
	Elapsed   time.Duration `json:"elapsed_ns"`
	// Phases is where the time went: setup (responders, eBPF attach),
	// probes, retry, port_space, stack, evidence.
	Phases []Phase `json:"phases"`
	// Notes are what limits the results without failing the run.
	Notes []string `json:"notes,omitempty"`
}

// Phase is the duration of one step of a run.
type Phase struct {
	Name    string        `json:"name"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

func (r *Report) phase(name string, since time.Time) {
	r.Phases = append(r.Phases, Phase{name, time.Since(since)})
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		*Report
		Summary Summary `json:"summary"`
		Verdict int     `json:"verdict"`
	}{r, r.Summary(), r.Verdict()})
}

// Summary counts what failed.
type Summary struct {
	Probes       int `json:"probes"`
	Mismatches   int `json:"mismatches"`
	ProbeErrors  int `json:"probe_errors"`
	CheckFailed  int `json:"checks_failed"`
	CheckErrors  int `json:"check_errors"`
	Violations   int `json:"evidence_violations"`
	ViolationPkt int `json:"evidence_violation_packets"`
	// EvidenceOverflow counts the flows the datapath could not record
	// (flow table full): violations among them would go unseen.
	EvidenceOverflow uint64 `json:"evidence_overflow"`
	// LoadErrors counts the --load flows that failed or ended before the
	// checks did: the checks did not all run under the load asked for.
	LoadErrors int `json:"load_errors"`
}

// Summary tallies the report.
func (r *Report) Summary() Summary {
	var s Summary
	for _, p := range r.Probes {
		s.Probes++
		switch {
		case p.Outcome == Failed:
			s.ProbeErrors++
		case !p.Match():
			s.Mismatches++
		}
	}
	for _, c := range append(append([]Check(nil), r.PortSpace...), r.Stack...) {
		switch {
		case c.Error != "":
			s.CheckErrors++
		case !c.Pass:
			s.CheckFailed++
		}
	}
	if r.Evidence != nil {
		s.Violations = len(r.Evidence.Violations)
		for _, v := range r.Evidence.Violations {
			s.ViolationPkt += int(v.Packets)
		}
		s.EvidenceOverflow = r.Evidence.Overflow
	}
	if r.Load != nil {
		for _, f := range r.Load.Flows {
			if f.Error != "" {
				s.LoadErrors++
			}
		}
	}
	return s
}

// Verdict is the exit status the report calls for: 0 when every check
// passes, 1 on any violation, 2 when nothing was violated but some probe
// or check could not run, the eBPF evidence is incomplete (a violation
// may have gone unrecorded), or the --load did not hold to the end.
func (r *Report) Verdict() int {
	s := r.Summary()
	switch {
	case s.Mismatches > 0 || s.CheckFailed > 0 || s.Violations > 0:
		return 1
	case s.ProbeErrors > 0 || s.CheckErrors > 0 || s.EvidenceOverflow > 0 || s.LoadErrors > 0:
		return 2
	}
	return 0
}

// Cell is one (from, to) cell of a port's truth tables.
type Cell struct {
	Expected, Observed, Diff byte
	Probes                   []*Probe
}

// Matrix returns the truth tables of one port: rows are From, columns To,
// in Namespaces order. A cell aggregates the probes to every address of
// its column's namespace.
func (r *Report) Matrix(port string) [][]Cell {
	idx := map[string]int{}
	for i, ns := range r.Namespaces {
		idx[ns] = i
	}
	m := make([][]Cell, len(r.Namespaces))
	for i := range m {
		m[i] = make([]Cell, len(r.Namespaces))
	}
	for _, p := range r.Probes {
		if p.Port != port {
			continue
		}
		c := &m[idx[p.From]][idx[p.To]]
		c.Probes = append(c.Probes, p)
	}
	for i := range m {
		for j := range m[i] {
			m[i][j].fill(r.Namespaces[j])
		}
	}
	return m
}

// fill sets the cell's symbols: '.' reachable, 'r' reachable (refused by
// the target), 'X' blocked, '>' blocked one way (the packets arrive, no
// answer can come back), 'w' answered by another namespace only, '~' some
// addresses reachable and some not, '!' a probe error; in Diff '.'
// agrees, 'X' disagrees, '!' error; ' ' for a namespace without
// addresses.
func (c *Cell) fill(to string) {
	if len(c.Probes) == 0 {
		c.Expected, c.Observed, c.Diff = ' ', ' ', ' '
		return
	}
	var exp, oneWay, obs, wrong, errs, bad, refused int
	for _, p := range c.Probes {
		switch {
		case p.Expect == to:
			exp++
		case p.OneWay:
			oneWay++
		}
		switch {
		case p.Outcome == Failed:
			errs++
		case p.Outcome.Reachable() && (p.By == "" || p.By == to):
			obs++
			if p.Outcome == Refused {
				refused++
			}
		case p.Outcome.Reachable():
			wrong++
		}
		if !p.Match() && p.Outcome != Failed {
			bad++
		}
	}
	n := len(c.Probes)
	agg := func(k int) byte {
		switch k {
		case n:
			return '.'
		case 0:
			return 'X'
		}
		return '~'
	}
	c.Expected, c.Observed = agg(exp), agg(obs)
	if c.Expected == 'X' && oneWay == n {
		c.Expected = '>'
	}
	switch {
	case c.Observed == '.' && refused > 0:
		c.Observed = 'r'
	case c.Observed == 'X' && wrong > 0:
		c.Observed = 'w'
	}
	switch {
	case bad > 0:
		c.Diff = 'X'
	case errs > 0:
		c.Diff, c.Observed = '!', '!'
	default:
		c.Diff = '.'
	}
}
