package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// SavePlot writes the SVG chart to path through a temporary file, so a
// failed write leaves no half-written chart behind.
func SavePlot(path string, r *Report) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".nsflow-plot-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := WriteSVG(tmp, r); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// WriteSVG draws the report as an SVG chart: per case, the median
// throughput uninstrumented and instrumented (with min..max whiskers),
// and below it the instrumented/uninstrumented ratio. Written by hand so
// that bench needs no plotting library.
func WriteSVG(w io.Writer, r *Report) error {
	const (
		left, top   = 70, 40
		groupW      = 90
		plotH       = 260
		ratioH      = 120
		gap         = 60
		ratioTop    = top + plotH + gap
		colorOff    = "#7f8c8d"
		colorOn     = "#2e86c1"
		colorRatio  = "#c0392b"
		ratioFloor  = 0.8 // the ratio panel spans 0.8..1.05
		ratioCeil   = 1.05
		labelOffset = 16
	)
	n := len(r.Cases)
	width := left + max(n, 1)*groupW + 40
	height := ratioTop + ratioH + 70
	maxG := 0.0
	for _, c := range r.Cases {
		maxG = max(maxG, c.Uninstrumented.Gbps.Max, c.Instrumented.Gbps.Max)
	}
	maxG = niceCeil(maxG)
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", width, height, width, height)
	p(`<title>nsflow bench</title>` + "\n")
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%d" y="20" font-size="14">nsflow bench: median throughput, uninstrumented (grey) and instrumented (blue)</text>`+"\n", left)

	// Throughput axis with four grid lines.
	y := func(g float64) float64 { return top + plotH - g/maxG*plotH }
	for i := 0; i <= 4; i++ {
		g := maxG * float64(i) / 4
		p(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, width-30, y(g), y(g))
		p(`<text x="%d" y="%.1f" text-anchor="end">%.3g</text>`+"\n", left-6, y(g)+4, g)
	}
	p(`<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle">Gbit/s</text>`+"\n", top+plotH/2, top+plotH/2)

	// Ratio axis.
	ry := func(v float64) float64 {
		v = math.Max(ratioFloor, math.Min(ratioCeil, v))
		return ratioTop + ratioH - (v-ratioFloor)/(ratioCeil-ratioFloor)*ratioH
	}
	for _, v := range []float64{0.8, 0.9, 0.95, 0.98, 1.0} {
		stroke := "#ddd"
		if v == 1.0 {
			stroke = "#999"
		}
		p(`<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="%s"/>`+"\n", left, width-30, ry(v), ry(v), stroke)
		p(`<text x="%d" y="%.1f" text-anchor="end">%.2f</text>`+"\n", left-6, ry(v)+4, v)
	}
	p(`<text x="14" y="%d" transform="rotate(-90 14 %d)" text-anchor="middle">on/off ratio</text>`+"\n", ratioTop+ratioH/2, ratioTop+ratioH/2)

	for i, c := range r.Cases {
		x0 := float64(left + i*groupW + 15)
		p(`<g class="case" data-case="%s">`+"\n", html.EscapeString(c.Name))
		for j, s := range []struct {
			sum   Summary
			color string
			label string
		}{{c.Uninstrumented, colorOff, "uninstrumented"}, {c.Instrumented, colorOn, "instrumented"}} {
			x := x0 + float64(j)*30
			m := s.sum.Gbps
			p(`<rect x="%.1f" y="%.1f" width="26" height="%.1f" fill="%s"><title>%s %s: %.2f Gbit/s (%.2f..%.2f), %.3f Mpps</title></rect>`+"\n",
				x, y(m.Median), y(0)-y(m.Median), s.color, html.EscapeString(c.Name), s.label, m.Median, m.Min, m.Max, s.sum.Mpps.Median)
			p(`<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="black"/>`+"\n", x+13, x+13, y(m.Min), y(m.Max))
		}
		p(`<rect x="%.1f" y="%.1f" width="56" height="%.1f" fill="%s" opacity="0.8"><title>%s ratio %.3f</title></rect>`+"\n",
			x0, ry(c.Ratio), ry(ratioFloor)-ry(c.Ratio), colorRatio, html.EscapeString(c.Name), c.Ratio)
		p(`<text x="%.1f" y="%.1f" text-anchor="middle">%.3f</text>`+"\n", x0+28, ry(c.Ratio)-4, c.Ratio)
		p(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x0+28, ratioTop+ratioH+labelOffset, html.EscapeString(c.Name))
		if c.Differences > 0 {
			p(`<text x="%.1f" y="%d" text-anchor="middle" fill="%s">%d diff</text>`+"\n", x0+28, ratioTop+ratioH+2*labelOffset, colorRatio, c.Differences)
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
