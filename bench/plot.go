package bench

import (
	"errors"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/nsflow/nsflow/traffic"
)

// CheckPlotPath tells, before a run, whether SavePlot could write path:
// the chart is SVG (a name with another extension, such as .png, would
// mislabel it), what is there already must be a regular file (through a
// symbolic link, which stays), and its directory must take a new file.
func CheckPlotPath(path string) error {
	if ext := strings.ToLower(filepath.Ext(path)); ext != "" && ext != ".svg" {
		return fmt.Errorf("%s: the chart is SVG; name it .svg", path)
	}
	path, err := plotTarget(path)
	if err != nil {
		return err
	}
	tmp, err := createPlotTemp(path)
	if err != nil {
		return err
	}
	tmp.Close()
	if err := os.Remove(tmp.Name()); err != nil {
		return plotErr(path, err)
	}
	return nil
}

// SavePlot writes the SVG chart to path through a temporary file, so a
// failed write leaves no half-written chart behind.
func SavePlot(path string, r *Report) error {
	path, err := plotTarget(path)
	if err != nil {
		return err
	}
	tmp, err := createPlotTemp(path)
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := WriteSVG(tmp, r); err != nil {
		tmp.Close()
		return plotErr(path, err)
	}
	// CreateTemp makes it private; a chart is for reading.
	if err := errors.Join(tmp.Chmod(0o644), tmp.Close()); err != nil {
		return plotErr(path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return plotErr(path, err)
	}
	return nil
}

// plotTarget is the file the chart replaces: path, or what the symbolic
// link at path leads to. Only a regular file is replaced: the rename
// would put the chart in place of a device (/dev/null), a directory's
// entry or the link itself.
func plotTarget(path string) (string, error) {
	target, err := filepath.EvalSymlinks(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if _, lerr := os.Lstat(path); lerr == nil {
			// A dangling link: the chart would replace the link.
			return "", fmt.Errorf("%s: a symbolic link that leads to no file; give a file's name", path)
		}
		return path, nil // a new file
	case err != nil:
		return "", plotErr(path, err)
	}
	st, err := os.Stat(target)
	if err != nil {
		return "", plotErr(path, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file (%s); the chart is written to a file", path, fileKind(st.Mode()))
	}
	return target, nil
}

func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&os.ModeDevice != 0:
		return "a device"
	case m&os.ModeNamedPipe != 0:
		return "a named pipe"
	case m&os.ModeSocket != 0:
		return "a socket"
	}
	return m.Type().String()
}

// createPlotTemp creates the temporary file beside path. Its error names
// the directory, which the user gave, not the temporary file, which they
// never heard of.
func createPlotTemp(path string) (*os.File, error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".nsflow-plot-*")
	if err != nil {
		return nil, fmt.Errorf("directory %s: %w", dir, unwrapPath(err))
	}
	return tmp, nil
}

// plotErr names path, not the temporary file, in an error from writing
// the chart.
func plotErr(path string, err error) error {
	return fmt.Errorf("%s: %w", path, unwrapPath(err))
}

// unwrapPath drops the file name from an *os.PathError or *os.LinkError,
// keeping the cause (no such file or directory, permission denied, ...).
func unwrapPath(err error) error {
	var pe *os.PathError
	var le *os.LinkError
	switch {
	case errors.As(err, &pe):
		return pe.Err
	case errors.As(err, &le):
		return le.Err
	}
	return err
}

// WriteSVG draws the report as an SVG chart: per case, the median
// throughput uninstrumented and instrumented with min..max whiskers (TCP
// in Gbit/s on the left axis, UDP in Mpps on the right one: small packets
// are about packet rate), and below it the instrumented/uninstrumented
// ratio. Written by hand so that bench needs no plotting library.
func WriteSVG(w io.Writer, r *Report) error {
	const (
		left, top  = 70, 40
		groupW     = 90
		plotH      = 260
		ratioH     = 140
		gap        = 60
		ratioTop   = top + plotH + gap
		colorOff   = "#7f8c8d"
		colorOn    = "#2e86c1"
		colorRatio = "#c0392b"
		lineH      = 16
	)
	n := len(r.Cases)
	right := left + max(n, 1)*groupW
	width := right + 70
	height := ratioTop + ratioH + 3*lineH + 20

	// Each case is drawn in its protocol's unit, on that unit's axis.
	value := func(c Case, s Summary) Spread {
		if c.Proto == traffic.UDP {
			return s.Mpps
		}
		return s.Gbps
	}
	maxV := map[traffic.Proto]float64{}
	loR, hiR := 0.8, 1.05
	for _, c := range r.Cases {
		maxV[c.Proto] = max(maxV[c.Proto], value(c, c.Uninstrumented).Max, value(c, c.Instrumented).Max)
		if o := c.Overhead(); o > 0 {
			loR, hiR = min(loR, math.Floor(o*20)/20), max(hiR, math.Ceil(o*20)/20)
		}
	}
	// Beyond 0.5..1.25 a bar is clipped (its label still gives the
	// value), so that one noisy case does not flatten the others.
	loR, hiR = max(loR, 0.5), min(hiR, 1.25)
	for k, v := range maxV {
		maxV[k] = niceCeil(v)
	}

	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", width, height, width, height)
	p(`<title>nsflow bench</title>` + "\n")
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%d" y="20" font-size="14">nsflow bench: median throughput, uninstrumented (grey) and instrumented (blue), min..max whiskers</text>`+"\n", left)

	y := func(proto traffic.Proto, v float64) float64 { return top + plotH - v/maxV[proto]*plotH }
	// Axes: TCP on the left, UDP on the right, four grid steps each.
	for _, ax := range []struct {
		proto  traffic.Proto
		x      int
		anchor string
		label  string
	}{{traffic.TCP, left - 6, "end", "TCP Gbit/s"}, {traffic.UDP, right + 6, "start", "UDP Mpps"}} {
		if maxV[ax.proto] == 0 {
			continue
		}
		for i := 0; i <= 4; i++ {
			v := maxV[ax.proto] * float64(i) / 4
			p(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#eee"/>`+"\n", left, right, y(ax.proto, v), y(ax.proto, v))
			p(`<text x="%d" y="%.1f" text-anchor="%s">%.3g</text>`+"\n", ax.x, y(ax.proto, v)+4, ax.anchor, v)
		}
		lx := 14
		if ax.proto == traffic.UDP {
			lx = width - 10
		}
		p(`<text x="%d" y="%d" transform="rotate(-90 %d %d)" text-anchor="middle">%s</text>`+"\n", lx, top+plotH/2, lx, top+plotH/2, ax.label)
	}

	ry := func(v float64) float64 {
		v = math.Max(loR, math.Min(hiR, v))
		return ratioTop + ratioH - (v-loR)/(hiR-loR)*ratioH
	}
	// 1.0 first, then the thresholds, skipping ticks closer than a line
	// of text to one already drawn.
	var drawn []float64
	for _, v := range []float64{1.0, loR, hiR, 0.9, 0.95, 0.98} {
		tooClose := v < loR || v > hiR
		for _, d := range drawn {
			tooClose = tooClose || math.Abs(ry(d)-ry(v)) < 12
		}
		if tooClose {
			continue
		}
		drawn = append(drawn, v)
		stroke := "#eee"
		if v == 1.0 {
			stroke = "#999"
		}
		p(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="%s"/>`+"\n", left, right, ry(v), ry(v), stroke)
		p(`<text x="%d" y="%.1f" text-anchor="end">%.2f</text>`+"\n", left-6, ry(v)+4, v)
	}
	p(`<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle">ratio on/off</text>`+"\n", ratioTop+ratioH/2, ratioTop+ratioH/2)

	for i, c := range r.Cases {
		x0 := float64(left + i*groupW + 15)
		unit := "Gbit/s"
		if c.Proto == traffic.UDP {
			unit = "Mpps"
		}
		p(`<g class="case" data-case="%s">`+"\n", html.EscapeString(c.Name))
		for j, s := range []struct {
			sum   Summary
			color string
			label string
		}{{c.Uninstrumented, colorOff, "uninstrumented"}, {c.Instrumented, colorOn, "instrumented"}} {
			x := x0 + float64(j)*30
			m := value(c, s.sum)
			p(`<rect x="%.1f" y="%.1f" width="26" height="%.1f" fill="%s"><title>%s %s: %.3f %s (%.3f..%.3f)</title></rect>`+"\n",
				x, y(c.Proto, m.Median), y(c.Proto, 0)-y(c.Proto, m.Median), s.color, html.EscapeString(c.Name), s.label, m.Median, unit, m.Min, m.Max)
			p(`<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/>`+"\n", x+13, x+13, y(c.Proto, m.Min), y(c.Proto, m.Max))
		}
		o := c.Overhead()
		p(`<rect x="%.1f" y="%.1f" width="56" height="%.1f" fill="%s" opacity="0.8"><title>%s ratio %.3f</title></rect>`+"\n",
			x0, ry(o), ry(loR)-ry(o), colorRatio, html.EscapeString(c.Name), o)
		p(`<text x="%.1f" y="%.1f" text-anchor="middle">%.3f</text>`+"\n", x0+28, ry(o)-4, o)
		p(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x0+28, ratioTop+ratioH+lineH, html.EscapeString(c.Name))
		p(`<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%s</text>`+"\n", x0+28, ratioTop+ratioH+2*lineH, unit)
		if c.Differences > 0 {
			p(`<text x="%.1f" y="%d" text-anchor="middle" fill="%s">%d diff</text>`+"\n", x0+28, ratioTop+ratioH+3*lineH, colorRatio, c.Differences)
		}
		p("</g>\n")
	}
	p("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// niceCeil rounds up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*e {
			return m * e
		}
	}
	return 10 * e
}
