package bench

import (
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
)

// WriteJSON writes the report as indented JSON.
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// csvHeader is the column list of WriteCSV, one row per case.
var csvHeader = []string{"case", "path", "proto", "pairs", "streams", "payload", "frame",
	"gbps_off", "gbps_off_min", "gbps_off_max", "gbps_on", "gbps_on_min", "gbps_on_max",
	"mpps_off", "mpps_on", "ratio", "bpf_ns_per_run", "bpf_ns_per_packet",
	"process_cores_off", "process_cores_on", "softirq_cores_off", "softirq_cores_on", "differences",
	"slice_ratio", "slice_ratio_q25", "slice_ratio_q75", "hook_ratio", "hook_ratio_q25", "hook_ratio_q75"}

// WriteCSV writes one row per case.
func WriteCSV(w io.Writer, r *Report) error {
	cw := csv.NewWriter(w)
	if err := cw.Write(csvHeader); err != nil {
		return err
	}
	f := func(x float64) string { return strconv.FormatFloat(x, 'f', 4, 64) }
	for _, c := range r.Cases {
		u, i := c.Uninstrumented, c.Instrumented
		hook := []string{"", "", ""} // not measured
		if h := c.HookRatio; h != nil {
			hook = []string{f(h.Median), f(h.Q25), f(h.Q75)}
		}
		if err := cw.Write(append([]string{c.Name, string(c.Path), string(c.Proto), strconv.Itoa(c.Pairs),
			strconv.Itoa(c.Streams), strconv.Itoa(c.Payload), strconv.Itoa(c.Frame),
			f(u.Gbps.Median), f(u.Gbps.Min), f(u.Gbps.Max), f(i.Gbps.Median), f(i.Gbps.Min), f(i.Gbps.Max),
			f(u.Mpps.Median), f(i.Mpps.Median), f(c.Ratio), f(c.BPF.NsPerRun), f(c.BPF.NsPerPacket),
			f(u.CPU.Process), f(i.CPU.Process), f(u.CPU.Softirq), f(i.CPU.Softirq), strconv.Itoa(c.Differences),
			f(c.SliceRatio.Median), f(c.SliceRatio.Q25), f(c.SliceRatio.Q75),
		}, hook...)); err != nil {
			return err
		}
	}
	cw.Flush()
	return cw.Error()
}

// WriteTable writes the human-readable report: one line per case, the
// iperf3 sanity lines, then the reconciliation, with every difference
// listed.
func WriteTable(w io.Writer, r *Report) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	hookCol := ""
	if r.Settings.HookCost {
		hookCol = "no-op ratio (IQR)\t"
	}
	fmt.Fprintf(tw, "case\tGbit/s off\tGbit/s on\tMpps off\tMpps on\tratio (IQR)\t%srounds ratio\tBPF ns/pkt\tCPU off\tCPU on\tsoftirq on\t\n", hookCol)
	for _, c := range r.Cases {
		u, i, sr := c.Uninstrumented, c.Instrumented, c.SliceRatio
		hook := ""
		if r.Settings.HookCost {
			hook = "-\t"
			if h := c.HookRatio; h != nil {
				hook = fmt.Sprintf("%.3f (%.2f..%.2f)\t", h.Median, h.Q25, h.Q75)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.3f\t%.3f\t%.3f (%.2f..%.2f)\t%s%.3f\t%.0f\t%.2f\t%.2f\t%.2f\t\n", c.Name,
			spreadStr(u.Gbps), spreadStr(i.Gbps), u.Mpps.Median, i.Mpps.Median, sr.Median, sr.Q25, sr.Q75, hook, c.Ratio,
			c.BPF.NsPerPacket, u.CPU.Process, i.CPU.Process, i.CPU.Softirq)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "median of %d rounds each (min..max); off = uninstrumented, on = nsflow attached; CPU in cores: this process, and host softirq\n",
		r.Settings.Rounds)
	fmt.Fprintf(w, "ratio = median (25th..75th percentile) of %d on slices of %v of one continuous run of the generator, each over the mean of the off slices around it; "+
		"rounds ratio = median of each round's on/off (noisier: its samples are seconds apart)\n", r.Settings.Slices, r.Settings.SliceLength)
	if r.Settings.HookCost {
		fmt.Fprintf(w, "no-op ratio = the same for a no-op tc program on the same hooks, in as many slices between nsflow's: what any tc program costs there\n")
	}
	for _, p := range r.Iperf3 {
		if p.Error != "" {
			fmt.Fprintf(w, "iperf3 %s/%s: %s\n", p.Path, p.Proto, p.Error)
			continue
		}
		fmt.Fprintf(w, "iperf3 %s/%s/1: %.2f Gbit/s", p.Path, p.Proto, p.Gbps)
		if p.Proto == "udp" {
			fmt.Fprintf(w, " %.3f Mpps", p.Mpps)
		}
		fmt.Fprintf(w, "; built-in generator %.2f Gbit/s on the same pair (%.2fx iperf3; medians of %d alternating runs)\n",
			p.Generator, p.Ratio, p.Rounds)
	}
	checks := 0
	differences := func(c *Case, s *Sample, which string) {
		for _, ch := range s.Checks {
			checks++
			if !ch.OK {
				fmt.Fprintf(w, "DIFFERENCE %s %s: %s: %s %d pkts %d bytes, %s %d pkts %d bytes\n",
					c.Name, which, ch.Subject, ch.Left, ch.LeftCount.Packets,
					ch.LeftCount.Bytes, ch.Right, ch.RightCount.Packets, ch.RightCount.Bytes)
			}
		}
	}
	for i := range r.Cases {
		c := &r.Cases[i]
		for j := range c.Samples {
			s := &c.Samples[j]
			differences(c, s, fmt.Sprintf("round %d %s", s.Round, mode(s.Instrumented)))
		}
		if c.BPF.Sample != nil { // reconciled like the others
			differences(c, c.BPF.Sample, "BPF cost sample")
		}
	}
	fmt.Fprintf(w, "reconciliation: %d checks, %d differences (nsflow vs kernel per interface and direction in packets and bytes; "+
		"UDP datagrams vs generator and the UDP MIB; TCP compared as a byte stream)\n", checks, r.Differences)
	return nil
}

func spreadStr(s Spread) string {
	return fmt.Sprintf("%.2f (%.2f..%.2f)", s.Median, s.Min, s.Max)
}

func mode(on bool) string {
	if on {
		return "instrumented"
	}
	return "uninstrumented"
}
