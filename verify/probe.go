package verify

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/topology"
	"golang.org/x/sys/unix"
)

// Probe is one probe from a namespace to one address of another, on one
// port, with what the model expects and what was observed.
type Probe struct {
	From string     `json:"from"`
	To   string     `json:"to"`
	Addr netip.Addr `json:"addr"`
	Port string     `json:"port"`
	// Expect is the namespace that must answer; "" means blocked.
	Expect string `json:"expect"`
	// OneWay marks a blocked probe whose packets the wiring still
	// delivers to To: only the answer cannot come back.
	OneWay  bool    `json:"one_way,omitempty"`
	Outcome Outcome `json:"outcome"`
	// By is the namespace whose stack answered, from the cookie in the
	// reply; Claimed is the namespace the responder was started for.
	By      string `json:"by,omitempty"`
	Claimed string `json:"claimed,omitempty"`
	Detail  string `json:"detail,omitempty"`
	// Try is the attempt that produced this result (1, or 2 after a retry).
	Try int `json:"try"`

	port topology.Port
}

// Match reports whether the observation agrees with the expectation. A
// probe that could not run never matches.
func (p *Probe) Match() bool {
	if p.Outcome == Failed {
		return false
	}
	if p.By != "" && p.Claimed != p.By {
		return false // a responder answering from a namespace not its own
	}
	if p.Expect == "" {
		return !p.Outcome.Reachable()
	}
	return p.Outcome.Reachable() && (p.By == "" || p.By == p.Expect)
}

// Reason says in words why a probe does not match.
func (p *Probe) Reason() string {
	switch {
	case p.Outcome == Failed:
		return "probe could not run: " + p.Detail
	case p.By != "" && p.Claimed != p.By:
		return fmt.Sprintf("the responder of %s runs in %s", p.Claimed, p.By)
	case p.Expect == "" && p.Outcome.Reachable():
		s := "reachable, expected blocked"
		if p.By != "" && p.By != p.To {
			s += ", answered by " + p.By
		}
		return appendDetail(s, p.Detail)
	case p.Expect != "" && !p.Outcome.Reachable():
		return appendDetail(fmt.Sprintf("%s, expected an answer from %s", p.Outcome, p.Expect), p.Detail)
	case p.By != p.Expect:
		return fmt.Sprintf("answered by %s, expected %s", p.By, p.Expect)
	}
	return ""
}

func appendDetail(s, d string) string {
	if d == "" {
		return s
	}
	return s + " (" + d + ")"
}

// prober runs probes from the namespaces of one verify run.
type prober struct {
	paths   map[string]string // namespace -> netns path
	names   map[uint64]string // netns cookie -> namespace
	timeout time.Duration
	// slots bounds the sockets open at once, so that a large matrix stays
	// under the file descriptor limit.
	slots chan struct{}
	seq   uint32
	mu    sync.Mutex
	// unwatched is set (under mu) when a run could not watch the
	// neighbour tables' overflow (see runChecked).
	unwatched string
}

// maxInFlight caps the sockets open at once; below it, half the file
// descriptor limit does, leaving the rest to responders and the datapath.
const maxInFlight = 8192

func newProber(paths map[string]string, names map[uint64]string, timeout time.Duration) *prober {
	slots := maxInFlight
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil {
		slots = int(min(uint64(maxInFlight), max(lim.Cur/2, 64)))
	}
	return &prober{paths: paths, names: names, timeout: timeout, slots: make(chan struct{}, slots)}
}

// run executes the probes concurrently, one batch per source namespace:
// the sockets are opened inside the namespace on one locked thread, then
// waited on from ordinary goroutines.
func (pr *prober) run(probes []*Probe) {
	byFrom := map[string][]*Probe{}
	var order []string
	for _, p := range probes {
		if _, ok := byFrom[p.From]; !ok {
			order = append(order, p.From)
		}
		byFrom[p.From] = append(byFrom[p.From], p)
	}
	var wg sync.WaitGroup
	for _, from := range order {
		batch := byFrom[from]
		for range min(len(batch), cap(pr.slots)) {
			pr.slots <- struct{}{}
		}
		wg.Go(func() {
			pr.runFrom(from, batch)
			for range min(len(batch), cap(pr.slots)) {
				<-pr.slots
			}
		})
	}
	wg.Wait()
}

// runChecked is run, with the timeouts distrusted if the host's neighbour
// tables overflowed meanwhile (see distrustTimeouts).
// When the counters cannot be read, unwatched says why.
func (pr *prober) runChecked(probes []*Probe) {
	before, err := neighTableFulls()
	pr.run(probes)
	after, err2 := neighTableFulls()
	if err = errors.Join(err, err2); err != nil {
		pr.mu.Lock()
		pr.unwatched = neighUnwatched(err)
		pr.mu.Unlock()
		return
	}
	distrustTimeouts(probes, before, after)
}

func (pr *prober) runFrom(from string, batch []*Probe) {
	var icmp []*Probe
	var socks []*sockProbe
	err := nsenter.Do(pr.paths[from], func() error {
		for _, p := range batch {
			if p.port.Proto == "icmp" {
				icmp = append(icmp, p)
				continue
			}
			socks = append(socks, pr.open(p))
		}
		return nil
	})
	var pg *pinger
	if err == nil && len(icmp) > 0 {
		pg, err = pr.openPinger(from, icmp)
	}
	if err != nil {
		for _, p := range batch {
			p.Outcome, p.Detail = Failed, err.Error()
		}
		for _, s := range socks {
			s.close()
		}
		return
	}
	var wg sync.WaitGroup
	for _, s := range socks {
		wg.Go(func() { pr.finish(s) })
	}
	if pg != nil {
		wg.Go(pg.run)
	}
	wg.Wait()
}

// attribute fills By and Claimed from a responder's identity.
func (pr *prober) attribute(p *Probe, id identity) {
	p.Claimed = id.claimed
	if n, ok := pr.names[id.cookie]; ok {
		p.By = n
	} else {
		p.By = fmt.Sprintf("netns cookie %d (not in the topology)", id.cookie)
	}
}

func (pr *prober) nextSeq() uint32 {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	pr.seq++
	return pr.seq
}
