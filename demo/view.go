package demo

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nsflow/nsflow/internal/english"
)

// stepState is where one start-up or teardown step is.
type stepState int

const (
	stepPending stepState = iota
	stepRunning
	stepDone
	stepFailed
	stepWarning // done, with something to know about
)

var stepMarks = map[stepState]string{stepPending: " ", stepRunning: "…", stepDone: "✓", stepFailed: "✗", stepWarning: "!"}

// step is one line of the progress list.
type step struct {
	Name   string
	State  stepState
	Detail string
}

// verdict is the isolation result shown at the bottom of the view.
type verdict struct {
	// Ran is false while verify has not finished.
	Ran bool
	// Status is verify's Verdict: 0 holds, 1 violated, 2 could not check.
	Status         int
	Probes, Checks int
	// Mismatches has one line per probe that disagrees with intent, per
	// stack or port-space check that failed or could not run, per pair
	// with evidence violations, and for incomplete evidence.
	Mismatches []string
	Err        error
}

// screen is everything the view shows at one moment.
type screen struct {
	Title      string
	MetricsURL string
	Uptime     time.Duration
	Steps      []step
	// Namespaces are the topology's namespaces in display order, without
	// the demo's prefix; Prefix is stripped from metric labels.
	Namespaces []string
	Prefix     string
	Prev, Cur  *reading
	Verdict    verdict
}

// render writes the screen as plain text of at most width columns where
// it can (the matrix is as wide as it needs).
func (s *screen) render(w io.Writer) {
	fmt.Fprintf(w, "%s  ·  up %s  ·  metrics: %s\n\n", s.Title, s.Uptime.Round(time.Second), s.MetricsURL)
	for _, st := range s.Steps {
		line := fmt.Sprintf(" %s %s", stepMarks[st.State], st.Name)
		if st.Detail != "" {
			line += ": " + st.Detail
		}
		fmt.Fprintln(w, line)
	}
	if s.Cur == nil || s.Prev == nil {
		fmt.Fprintln(w, "\n(waiting for the first counts)")
		return
	}
	fmt.Fprintln(w)
	s.renderRates(w)
	fmt.Fprintln(w)
	s.renderMatrix(w)
	fmt.Fprintln(w)
	s.renderVerdict(w)
}

// label maps a metric's netns label to its display name.
func (s *screen) label(netns string) string { return strings.TrimPrefix(netns, s.Prefix) }

// shown returns the display names of the rows and columns: the topology's
// namespaces first, then any other label the counters carry (e.g. the
// host or unknown).
func (s *screen) shown(keys ...map[string]float64) []string {
	out := slices.Clone(s.Namespaces)
	var extra []string
	for _, m := range keys {
		for k := range m {
			for _, part := range strings.Split(k, "\x00") {
				if n := s.label(part); !slices.Contains(out, n) && !slices.Contains(extra, n) {
					extra = append(extra, n)
				}
			}
		}
	}
	slices.Sort(extra)
	return append(out, extra...)
}

func (s *screen) renderRates(w io.Writer) {
	dt := s.Cur.at.Sub(s.Prev.at)
	rx := rates(s.Prev.rxBytes, s.Cur.rxBytes, dt)
	tx := rates(s.Prev.txBytes, s.Cur.txBytes, dt)
	rxp := rates(s.Prev.rxPackets, s.Cur.rxPackets, dt)
	txp := rates(s.Prev.txPackets, s.Cur.txPackets, dt)
	byLabel := func(m map[string]float64) map[string]float64 {
		out := map[string]float64{}
		for k, v := range m {
			out[s.label(k)] += v
		}
		return out
	}
	rx, tx, rxp, txp = byLabel(rx), byLabel(tx), byLabel(rxp), byLabel(txp)
	fmt.Fprintf(w, "%-12s %12s %12s %10s %10s\n", "namespace", "rx", "tx", "rx pkt/s", "tx pkt/s")
	for _, n := range s.shown(s.Cur.rxBytes, s.Cur.txBytes) {
		fmt.Fprintf(w, "%-12s %12s %12s %10s %10s\n", n,
			humanRate(rx[n], "B/s"), humanRate(tx[n], "B/s"), humanRate(rxp[n], ""), humanRate(txp[n], ""))
	}
}

func (s *screen) renderMatrix(w io.Writer) {
	dt := s.Cur.at.Sub(s.Prev.at)
	r := rates(s.Prev.pairBytes, s.Cur.pairBytes, dt)
	cells := map[string]float64{}
	for k, v := range r {
		src, dst, _ := strings.Cut(k, "\x00")
		cells[pairKey(s.label(src), s.label(dst))] += v
	}
	names := s.shown(s.Cur.pairBytes)
	width := 7
	for _, n := range names {
		width = max(width, len(n)+1)
	}
	fmt.Fprintln(w, "bytes/s from namespace (row) to namespace (column)")
	fmt.Fprintf(w, "%-*s", width+1, "")
	for _, n := range names {
		fmt.Fprintf(w, "%*s", width, n)
	}
	fmt.Fprintln(w)
	for _, src := range names {
		fmt.Fprintf(w, "%-*s", width+1, src)
		for _, dst := range names {
			cell := "."
			if v, ok := cells[pairKey(src, dst)]; ok && v > 0 {
				cell = humanRate(v, "")
			}
			fmt.Fprintf(w, "%*s", width, cell)
		}
		fmt.Fprintln(w)
	}
}

func (s *screen) renderVerdict(w io.Writer) {
	var seen float64
	var pairs []string
	for k, v := range s.Cur.violations {
		if v > 0 {
			src, dst, _ := strings.Cut(k, "\x00")
			seen += v
			pairs = append(pairs, fmt.Sprintf("%s→%s %.0f", s.label(src), s.label(dst), v))
		}
	}
	slices.Sort(pairs)
	fmt.Fprintf(w, "datapath: %s attached, %s, flow table %.0f/%.0f\n",
		english.Count(s.Cur.attached, "program"), english.Count(s.Cur.attachErrors, "attach error"), s.Cur.flowEntries, s.Cur.flowCapacity)
	v := s.Verdict
	switch {
	case v.Err != nil:
		fmt.Fprintf(w, "isolation: verify failed: %v\n", v.Err)
	case !v.Ran:
		fmt.Fprintln(w, "isolation: probing…")
	case v.Status == 0:
		fmt.Fprintf(w, "isolation: HOLDS: %s and %s, all as declared\n", english.Count(v.Probes, "probe"), english.Count(v.Checks, "stack check"))
	default:
		what := "VIOLATED"
		if v.Status != 1 {
			what = "COULD NOT CHECK"
		}
		fmt.Fprintf(w, "isolation: %s: %s from %s and %s\n", what, english.Count(len(v.Mismatches), "finding"), english.Count(v.Probes, "probe"), english.Count(v.Checks, "stack check"))
		for _, m := range v.Mismatches {
			fmt.Fprintln(w, "  "+m)
		}
	}
	if seen > 0 {
		fmt.Fprintf(w, "datapath saw %s between denied pairs: %s\n", english.Count(seen, "packet"), strings.Join(pairs, ", "))
	} else {
		fmt.Fprintln(w, "datapath saw no packet between denied pairs")
	}
}

// humanRate formats a rate with an SI suffix: 950, 1.2k, 3.4M.
func humanRate(v float64, unit string) string {
	if v == 0 {
		return "0" + unit
	}
	for _, p := range []struct {
		div float64
		sfx string
	}{{1e9, "G"}, {1e6, "M"}, {1e3, "k"}} {
		if v >= p.div {
			return fmt.Sprintf("%.1f%s%s", v/p.div, p.sfx, unit)
		}
	}
	return fmt.Sprintf("%.0f%s", v, unit)
}
