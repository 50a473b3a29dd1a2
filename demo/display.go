package demo

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nsflow/nsflow/topology"
	"github.com/prometheus/client_golang/prometheus"
)

// display owns the output: in interactive mode it redraws the whole screen
// in place; otherwise it prints each step as a line and a snapshot of the
// view from time to time, which reads well in a log or a CI job.
type display struct {
	out         io.Writer
	interactive bool
	refresh     time.Duration
	snapEvery   time.Duration
	start       time.Time
	// height returns the terminal's rows (interactive only; nil: unknown).
	height func() int

	mu       sync.Mutex
	scr      screen
	lastSnap time.Time
}

func newDisplay(o Options, spec *topology.Spec) *display {
	names := make([]string, len(spec.Namespaces))
	for i, n := range spec.Namespaces {
		names[i] = strings.TrimPrefix(n.Name, o.Prefix)
	}
	d := &display{
		out: o.Out, interactive: o.Interactive, refresh: o.Refresh, snapEvery: o.SnapshotEvery,
		start: time.Now(), height: o.TerminalHeight,
		scr: screen{
			Title:      "nsflow demo: topology " + spec.Name,
			MetricsURL: "(starting)",
			Namespaces: names,
			Prefix:     o.Prefix,
		},
	}
	if d.interactive {
		// Clear once and hide the cursor while redrawing.
		fmt.Fprint(d.out, "\x1b[2J\x1b[?25l")
	}
	return d
}

// metricsURL records and returns where /metrics is served.
func (d *display) metricsURL(addr net.Addr) string {
	host, port, _ := net.SplitHostPort(addr.String())
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "localhost"
	}
	url := "http://" + net.JoinHostPort(host, port) + "/metrics"
	d.mu.Lock()
	d.scr.MetricsURL = url
	d.mu.Unlock()
	return url
}

// metricsStopped says, from now on, that /metrics is no longer served:
// the final view outlives the server.
func (d *display) metricsStopped() {
	d.mu.Lock()
	d.scr.MetricsURL = "(stopped)"
	d.mu.Unlock()
}

// stepHandle reports on one step of the progress list.
type stepHandle struct {
	d *display
	i int
}

func (d *display) step(name string) *stepHandle {
	d.mu.Lock()
	d.scr.Steps = append(d.scr.Steps, step{Name: name, State: stepRunning})
	h := &stepHandle{d: d, i: len(d.scr.Steps) - 1}
	d.mu.Unlock()
	d.changed(h.i)
	return h
}

// progress shows a topology phase's progress as the step's detail.
func (h *stepHandle) progress(p topology.Progress) {
	h.d.mu.Lock()
	h.d.scr.Steps[h.i].Detail = fmt.Sprintf("%s %d/%d", p.Phase, p.Done, p.Total)
	h.d.mu.Unlock()
	if h.d.interactive {
		h.d.redraw()
	}
}

func (h *stepHandle) done(format string, args ...any) {
	h.end(stepDone, fmt.Sprintf(format, args...))
}

// warn marks the step done, with a warning as its detail.
func (h *stepHandle) warn(format string, args ...any) {
	h.end(stepWarning, fmt.Sprintf(format, args...))
}

// fail marks the step failed when err is not nil, and returns err.
func (h *stepHandle) fail(err error) error {
	if err != nil {
		h.end(stepFailed, err.Error())
	}
	return err
}

// end gives the step its final state and detail, and shows it.
func (h *stepHandle) end(state stepState, detail string) {
	h.d.mu.Lock()
	h.d.scr.Steps[h.i].State = state
	h.d.scr.Steps[h.i].Detail = detail
	h.d.mu.Unlock()
	h.d.changed(h.i)
}

// changed shows a step's new state: a redraw, or one line.
func (d *display) changed(i int) {
	if d.interactive {
		d.redraw()
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.scr.Steps[i]
	line := fmt.Sprintf("[%6.1fs] %s %s", time.Since(d.start).Seconds(), stepMarks[st.State], st.Name)
	if st.Detail != "" {
		line += ": " + st.Detail
	}
	fmt.Fprintln(d.out, line)
}

func (d *display) setVerdict(v verdict) {
	d.mu.Lock()
	d.scr.Verdict = v
	d.mu.Unlock()
}

// redraw paints the screen from the top left, clearing what the previous
// frame left to the right of each line and below the last.
func (d *display) redraw() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.scr.Uptime = time.Since(d.start)
	var b bytes.Buffer
	d.scr.render(&b)
	lines := strings.SplitAfter(b.String(), "\n")
	if d.height != nil {
		lines = fitHeight(lines, d.height())
	}
	frame := strings.ReplaceAll(strings.Join(lines, ""), "\n", "\x1b[K\n")
	fmt.Fprint(d.out, "\x1b[H"+frame+"\x1b[J")
}

// fitHeight cuts a frame to a terminal of h lines (one stays free): a
// taller frame would scroll and smear. Once the last block is the
// verdict, which the demo is for, the cut is made above it.
func fitHeight(lines []string, h int) []string {
	if n := len(lines); n > 0 && lines[n-1] == "" {
		lines = lines[:n-1] // what SplitAfter leaves after the last newline
	}
	if h <= 1 || len(lines) <= h-1 {
		return lines
	}
	tail := 0 // lines of the last block, after the last empty line
	for i := len(lines) - 1; i >= 0 && strings.TrimSpace(lines[i]) != ""; i-- {
		tail++
	}
	verdict := slices.ContainsFunc(lines[len(lines)-tail:], func(l string) bool { return strings.HasPrefix(l, "isolation:") })
	keep := h - 1 - tail - 1 // and a line saying what was cut
	if !verdict || keep < 1 {
		return lines[:h-1]
	}
	cut := fmt.Sprintf("… %d lines not shown: enlarge the terminal\n", len(lines)-keep-tail)
	return append(append(slices.Clip(lines[:keep]), cut), lines[len(lines)-tail:]...)
}

// snapshot prints the view once, for non-interactive output.
func (d *display) snapshot() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.scr.Uptime = time.Since(d.start)
	d.lastSnap = time.Now()
	fmt.Fprintln(d.out, strings.Repeat("-", 72))
	d.scr.render(d.out)
	fmt.Fprintln(d.out, strings.Repeat("-", 72))
}

// live reads the metrics every refresh interval and shows them until ctx
// ends.
func (d *display) live(ctx context.Context, g prometheus.Gatherer) {
	tick := time.NewTicker(d.refresh)
	defer tick.Stop()
	d.read(g)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		d.read(g)
		if d.interactive {
			d.redraw()
		} else if time.Since(d.lastSnap) >= d.snapEvery {
			d.snapshot()
		}
	}
}

// read gathers the metrics and shifts the readings. A collector that
// fails shows up in its own metrics, so a partial gather is still used.
func (d *display) read(g prometheus.Gatherer) {
	mfs, _ := g.Gather()
	r := newReading(time.Now(), mfs)
	d.mu.Lock()
	d.scr.Prev, d.scr.Cur = d.scr.Cur, r
	d.mu.Unlock()
}

// finish shows the final state and the summary, and restores the cursor.
func (d *display) finish(sum *Summary) {
	if d.interactive {
		d.redraw()
		fmt.Fprint(d.out, "\x1b[?25h")
	} else {
		d.snapshot()
	}
	for _, line := range sum.lines() {
		fmt.Fprintln(d.out, line)
	}
}
