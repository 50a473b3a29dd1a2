package verify

import (
	"bufio"
	"fmt"
	"io"
	"strings"

	"github.com/nsflow/nsflow/internal/english"
)

// keyChars name the columns, one character each up to 62 namespaces, so
// that a 50-namespace matrix stays one screen wide; beyond that two.
const keyChars = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

func columnKeys(n int) []string {
	keys := make([]string, n)
	for i := range keys {
		if n <= len(keyChars) {
			keys[i] = keyChars[i : i+1]
		} else {
			keys[i] = string([]byte{keyChars[i/len(keyChars)], keyChars[i%len(keyChars)]})
		}
	}
	return keys
}

// maxListed bounds the detail lines of the table output; JSON has all.
const maxListed = 40

// WriteTable writes the report for a terminal: the legend, per port the
// expected, observed and difference matrices side by side, the port-space
// and stack checks as one matrix each, the details of what failed, the
// eBPF evidence, the load and the verdict.
func (r *Report) WriteTable(w io.Writer) error {
	bw := bufio.NewWriter(w)
	s := r.Summary()
	fmt.Fprintf(bw, "nsflow verify: topology %s, %s, ports %s: %s in %.1fs (%d probed again)\n\n",
		r.Topology, english.Count(len(r.Namespaces), "namespace"), strings.Join(r.Ports, " "), english.Count(s.Probes, "probe"), r.Elapsed.Seconds(), r.Retried)
	keys := columnKeys(len(r.Namespaces))
	width := 0
	for _, ns := range r.Namespaces {
		width = max(width, min(len(ns), 16))
	}
	fmt.Fprintln(bw, "Cells: . reachable   r reachable (refused by the target: the packet arrived)   X blocked")
	fmt.Fprintln(bw, "       > blocked one way (the wiring delivers the packets, no answer can come back)")
	fmt.Fprintln(bw, "       w answered by another namespace only   ~ some addresses of the namespace reachable")
	fmt.Fprintln(bw, "       ! probe error   - self")
	fmt.Fprintln(bw, "Difference: . as expected   X not as expected   ! could not probe")
	fmt.Fprintln(bw, "Rows probe from, columns are probed; column keys:")
	// The legend keeps full names, as many to a line as fit.
	full := 0
	for _, ns := range r.Namespaces {
		full = max(full, len(ns))
	}
	perLine := max(1, 100/(full+len(keys[0])+3))
	for i, ns := range r.Namespaces {
		fmt.Fprintf(bw, "  %s %-*s", keys[i], full, ns)
		if (i+1)%perLine == 0 || i == len(r.Namespaces)-1 {
			fmt.Fprintln(bw)
		}
	}
	header := strings.Join(keys, "")
	colW := max(len(header), len("difference"))
	rowLabel := func(i int) string { return fmt.Sprintf("%s %-*s", keys[i], width, trunc(r.Namespaces[i], width)) }
	blank := strings.Repeat(" ", len(rowLabel(0)))
	for _, port := range r.Ports {
		r.writeMatrices(bw, port, header, colW, rowLabel, blank)
	}
	r.writeChecks(bw, "Port space (each namespace's own listener answers on its loopback)", r.PortSpace, r.Ports, rowLabel, blank, portSpaceInfo)
	r.writeChecks(bw, "Stack (each namespace sees only its own objects)", r.Stack, stackKinds, rowLabel, blank, "")
	r.writeDetails(bw)
	r.writeEvidence(bw, header, rowLabel, blank)
	if r.Load != nil {
		fmt.Fprintf(bw, "\nLoad: %s on allowed paths, %.2f Gbit/s in total over %.1fs\n", english.Count(len(r.Load.Flows), "bulk TCP flow"), r.Load.TotalGbps, r.Load.Elapsed.Seconds())
		for _, f := range r.Load.Flows {
			fmt.Fprintf(bw, "  %s -> %s (%s): %.2f Gbit/s over %.1fs%s\n", f.From, f.To, f.Addr, f.Gbps, f.Elapsed.Seconds(), errSuffix(f.Error))
		}
	}
	fmt.Fprintln(bw)
	for _, n := range r.Notes {
		fmt.Fprintf(bw, "note: %s\n", n)
	}
	fmt.Fprintln(bw, r.VerdictLine())
	return bw.Flush()
}

// maxSideBySide is the widest line for which the three matrices of a port
// go side by side; wider ones are printed one below the other.
const maxSideBySide = 120

// writeMatrices prints a port's expected, observed and difference tables;
// when every cell is as expected, the observed table alone says it all.
func (r *Report) writeMatrices(w io.Writer, port, header string, colW int, rowLabel func(int) string, blank string) {
	m := r.Matrix(port)
	rows := make([][3]string, len(m))
	same := true
	for i := range m {
		var e, o, d strings.Builder
		for j, c := range m[i] {
			if i == j {
				c.Expected, c.Observed, c.Diff = '-', '-', '-'
			}
			e.WriteByte(c.Expected)
			o.WriteByte(c.Observed)
			d.WriteByte(c.Diff)
			same = same && (c.Diff == '.' || c.Diff == ' ' || c.Diff == '-')
		}
		rows[i] = [3]string{e.String(), o.String(), d.String()}
	}
	if same {
		fmt.Fprintf(w, "\n%s: every cell as expected\n%s  %s\n", port, blank, header)
		for i := range rows {
			fmt.Fprintf(w, "%s  %s\n", rowLabel(i), rows[i][1])
		}
		return
	}
	if len(blank)+3*(colW+2) <= maxSideBySide {
		fmt.Fprintf(w, "\n%s\n%s  %-*s  %-*s  %s\n%s  %-*s  %-*s  %s\n", port,
			blank, colW, "expected", colW, "observed", "difference",
			blank, colW, header, colW, header, header)
		for i := range rows {
			fmt.Fprintf(w, "%s  %-*s  %-*s  %s\n", rowLabel(i), colW, rows[i][0], colW, rows[i][1], rows[i][2])
		}
		return
	}
	for k, title := range []string{"expected", "observed", "difference"} {
		fmt.Fprintf(w, "\n%s %s\n%s  %s\n", port, title, blank, header)
		for i := range rows {
			fmt.Fprintf(w, "%s  %s\n", rowLabel(i), rows[i][k])
		}
	}
}

func errSuffix(e string) string {
	if e == "" {
		return ""
	}
	return " (error: " + e + ")"
}

// trunc shortens a row label from the left: names of one topology tend
// to share a prefix and differ at the end.
func trunc(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "~" + s[len(s)-n+1:]
}

// portSpaceInfo heads the information of the port-space checks: all of
// it is about ports another process holds, which nsflow's responders could
// not take, so the check of such a port proves less than a '.' would say.
const portSpaceInfo = "i passed as far as it could be checked: another process holds the port there (information, not a violation):"

// writeChecks prints checks as a matrix: rows namespaces, one column per
// kind, '.' pass, 'X' fail, '!' could not check. With an infoTitle, a
// passed check that has information is 'i', and its information follows
// the matrix under infoTitle.
func (r *Report) writeChecks(w io.Writer, title string, checks []Check, kinds []string, rowLabel func(int) string, blank, infoTitle string) {
	cols := []string{}
	for _, k := range kinds {
		for _, c := range checks {
			if c.Kind == k {
				cols = append(cols, k)
				break
			}
		}
	}
	if len(cols) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s\n%s", title, blank)
	for _, k := range cols {
		fmt.Fprintf(w, "  %s", k)
	}
	fmt.Fprintln(w)
	byKey := map[[2]string]Check{}
	for _, c := range checks {
		byKey[[2]string{c.Netns, c.Kind}] = c
	}
	var info []string
	for i, ns := range r.Namespaces {
		fmt.Fprint(w, rowLabel(i))
		for _, k := range cols {
			c, ok := byKey[[2]string{ns, k}]
			sym := "."
			switch {
			case !ok:
				sym = " "
			case c.Error != "":
				sym = "!"
			case !c.Pass:
				sym = "X"
			case infoTitle != "" && len(c.Info) > 0:
				sym = "i"
				for _, l := range c.Info {
					info = append(info, fmt.Sprintf("%-9s %s: %s", k, ns, l))
				}
			}
			fmt.Fprintf(w, "  %-*s", len(k), sym)
		}
		fmt.Fprintln(w)
	}
	if len(info) == 0 {
		return
	}
	fmt.Fprintln(w, infoTitle)
	for i, l := range info {
		if i == maxListed {
			fmt.Fprintf(w, "  ... and %d more (see -o json)\n", len(info)-maxListed)
			break
		}
		fmt.Fprintln(w, "  "+l)
	}
}

func (r *Report) writeDetails(w io.Writer) {
	var lines []string
	for _, p := range r.Probes {
		if !p.Match() {
			lines = append(lines, fmt.Sprintf("%-9s %s -> %s %s: %s", p.Port, p.From, p.To, p.Addr, p.Reason()))
		}
	}
	for _, c := range append(append([]Check(nil), r.PortSpace...), r.Stack...) {
		if c.Error != "" {
			lines = append(lines, fmt.Sprintf("%-9s %s: could not check: %s", c.Kind, c.Netns, c.Error))
		}
		for _, p := range c.Problems {
			lines = append(lines, fmt.Sprintf("%-9s %s: %s", c.Kind, c.Netns, p))
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Fprintf(w, "\nNot as expected (%d):\n", len(lines))
	for i, l := range lines {
		if i == maxListed {
			fmt.Fprintf(w, "  ... and %d more (see -o json)\n", len(lines)-maxListed)
			break
		}
		fmt.Fprintln(w, "  "+l)
	}
}

// writeEvidence lists the packets delivered where none may arrive and, if
// there are any between namespaces of the topology, marks their cells in
// a matrix of its own (rows send, columns received).
func (r *Report) writeEvidence(w io.Writer, header string, rowLabel func(int) string, blank string) {
	ev := r.Evidence
	if ev == nil {
		fmt.Fprintln(w, "\neBPF evidence: not collected")
		return
	}
	fmt.Fprintf(w, "\neBPF evidence: %s observed, %s, %s with packets that must not arrive\n",
		english.Count(ev.Ports, "port"), english.Count(ev.Flows, "delivered flow"), english.Count(len(ev.Violations), "pair"))
	if ev.Overflow > 0 {
		fmt.Fprintf(w, "  incomplete: %s not recorded (flow table full); a violation among them would go unseen\n", english.Count(ev.Overflow, "flow"))
	}
	for _, v := range ev.Violations {
		fmt.Fprintf(w, "  %s -> %s: %s, %s in %s\n", v.Src, v.Dst, english.Count(v.Packets, "packet"), english.Count(v.Bytes, "byte"), english.Count(len(v.Flows), "flow"))
	}
	idx := map[string]int{}
	for i, ns := range r.Namespaces {
		idx[ns] = i
	}
	cells := map[[2]int]bool{}
	for _, v := range ev.Violations {
		i, ok1 := idx[v.Src]
		j, ok2 := idx[v.Dst]
		if ok1 && ok2 {
			cells[[2]int{i, j}] = true
		}
	}
	if len(cells) == 0 {
		return
	}
	fmt.Fprintf(w, "%s  %s\n", blank, header)
	for i := range r.Namespaces {
		row := make([]byte, len(r.Namespaces))
		for j := range row {
			switch {
			case i == j:
				row[j] = '-'
			case cells[[2]int{i, j}]:
				row[j] = 'X'
			default:
				row[j] = '.'
			}
		}
		fmt.Fprintf(w, "%s  %s\n", rowLabel(i), row)
	}
}

// VerdictLine is the one-line result.
func (r *Report) VerdictLine() string {
	s := r.Summary()
	var incomplete string
	if s.EvidenceOverflow > 0 {
		incomplete = fmt.Sprintf("eBPF evidence incomplete: %s not recorded (flow table full)", english.Count(s.EvidenceOverflow, "flow"))
	}
	switch r.Verdict() {
	case 0:
		if r.Evidence == nil {
			return fmt.Sprintf("PASS: isolation holds (%s, %s; no eBPF evidence collected)", english.Count(s.Probes, "probe"), english.Count(len(r.PortSpace)+len(r.Stack), "check"))
		}
		return fmt.Sprintf("PASS: isolation holds (%s, %s, no packet where none may arrive)", english.Count(s.Probes, "probe"), english.Count(len(r.PortSpace)+len(r.Stack), "check"))
	case 1:
		line := fmt.Sprintf("FAIL: %s not as expected, %s failed, %s (%s); %s",
			english.Count(s.Mismatches, "probe"), english.Count(s.CheckFailed, "check"), english.Count(s.Violations, "evidence violation"),
			english.Count(s.ViolationPkt, "packet"), english.Count(s.ProbeErrors, "probe error"))
		if incomplete != "" {
			line += "; " + incomplete
		}
		return line
	}
	var why []string
	if s.ProbeErrors > 0 || s.CheckErrors > 0 {
		why = append(why, fmt.Sprintf("%s and %s could not run", english.Count(s.ProbeErrors, "probe"), english.Count(s.CheckErrors, "check")))
	}
	if incomplete != "" {
		why = append(why, incomplete)
	}
	if s.LoadErrors > 0 {
		why = append(why, fmt.Sprintf("%s failed or ended before the checks did", english.Count(s.LoadErrors, "load flow")))
	}
	return "ERROR: " + strings.Join(why, "; ")
}
