package verify

import (
	"encoding/xml"
	"fmt"
	"io"
	"strings"

	"github.com/nsflow/nsflow/internal/english"
)

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Time     float64      `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Errors   int         `xml:"errors,attr"`
	Cases    []junitCase `xml:"testcase"`
	Out      string      `xml:"system-out,omitempty"`
}

type junitCase struct {
	Class   string        `xml:"classname,attr"`
	Name    string        `xml:"name,attr"`
	Failure *junitMessage `xml:"failure,omitempty"`
	Error   *junitMessage `xml:"error,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Text    string `xml:",chardata"`
}

func (s *junitSuite) add(c junitCase) {
	s.Tests++
	if c.Failure != nil {
		s.Failures++
	}
	if c.Error != nil {
		s.Errors++
	}
	s.Cases = append(s.Cases, c)
}

// WriteJUnit writes one test case per matrix cell (per port), per check,
// per namespace pair with evidence violations and per load flow, for CI
// systems.
func (r *Report) WriteJUnit(w io.Writer) error {
	var suites []junitSuite
	for _, port := range r.Ports {
		s := junitSuite{Name: "reachability " + port}
		for i, row := range r.Matrix(port) {
			for j, cell := range row {
				if i == j || len(cell.Probes) == 0 {
					continue
				}
				c := junitCase{Class: "reachability." + port, Name: r.Namespaces[i] + " -> " + r.Namespaces[j]}
				var lines []string
				failed, errored := false, false
				for _, p := range cell.Probes {
					if !p.Match() {
						lines = append(lines, fmt.Sprintf("%s: %s", p.Addr, p.Reason()))
						failed = failed || p.Outcome != Failed
						errored = errored || p.Outcome == Failed
					}
				}
				msg := &junitMessage{Message: fmt.Sprintf("expected %c, observed %c", cell.Expected, cell.Observed), Text: strings.Join(lines, "\n")}
				switch {
				case failed:
					c.Failure = msg
				case errored:
					c.Error = msg
				}
				s.add(c)
			}
		}
		suites = append(suites, s)
	}
	for _, grp := range []struct {
		name   string
		checks []Check
	}{{"port space", r.PortSpace}, {"stack", r.Stack}} {
		s := junitSuite{Name: grp.name}
		for _, ch := range grp.checks {
			c := junitCase{Class: strings.ReplaceAll(grp.name, " ", "_") + "." + ch.Kind, Name: ch.Netns}
			switch {
			case ch.Error != "":
				c.Error = &junitMessage{Message: "could not check", Text: ch.Error}
			case !ch.Pass:
				c.Failure = &junitMessage{Message: fmt.Sprintf("%d problems", len(ch.Problems)), Text: strings.Join(ch.Problems, "\n")}
			}
			s.add(c)
		}
		suites = append(suites, s)
	}
	if r.Evidence != nil {
		s := junitSuite{Name: "ebpf evidence"}
		summary := junitCase{Class: "evidence", Name: "no packet delivered where none may arrive"}
		switch {
		case len(r.Evidence.Violations) > 0:
			summary.Failure = &junitMessage{Message: "packets delivered where none may arrive"}
		case r.Evidence.Overflow > 0:
			summary.Error = &junitMessage{Message: "evidence incomplete",
				Text: english.Count(r.Evidence.Overflow, "flow") + " not recorded (flow table full)"}
		}
		s.add(summary)
		for _, v := range r.Evidence.Violations {
			s.add(junitCase{Class: "evidence", Name: v.Src + " -> " + v.Dst,
				Failure: &junitMessage{Message: fmt.Sprintf("%d packets, %d bytes", v.Packets, v.Bytes)}})
		}
		suites = append(suites, s)
	}
	if r.Load != nil {
		s := junitSuite{Name: "load"}
		for _, f := range r.Load.Flows {
			c := junitCase{Class: "load", Name: f.From + " -> " + f.To}
			if f.Error != "" {
				c.Error = &junitMessage{Message: "the load did not hold", Text: f.Error}
			}
			s.add(c)
		}
		suites = append(suites, s)
	}
	// The notes limit the whole run, and the schema has no place for
	// output above a suite: each suite carries them, so that whichever
	// one a CI system shows, they are there.
	var notes strings.Builder
	for _, n := range r.Notes {
		notes.WriteString("note: " + n + "\n")
	}
	for i := range suites {
		suites[i].Out = notes.String()
	}
	out := junitSuites{Name: "nsflow verify " + r.Topology, Time: r.Elapsed.Seconds(), Suites: suites}
	for _, s := range suites {
		out.Tests += s.Tests
		out.Failures += s.Failures
		out.Errors += s.Errors
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(out); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}
