package deploy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nsflow/nsflow/demo"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/traffic"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestLiveScrape checks the rules and the dashboard against what a real
// agent serves: the demo's agent on the seed topology, with its traffic,
// plus a rogue veth between two namespaces that the isolation section
// keeps apart, so that the violation counter exists too. Every metric and
// label the rules and the dashboard use must be in the scrape, and so
// must every metric of the contract (agentMetrics) with its labels.
func TestLiveScrape(t *testing.T) {
	testenv.RequireBPFFS(t)
	prefix := testenv.Name("dp") + "-"
	var live map[string][]string
	var scrapeErr error
	started := func(i demo.Info) {
		if err := rogueLink(i.Spec, prefix+"ns1", prefix+"c1"); err != nil {
			scrapeErr = err
			return
		}
		// The first datagrams may be lost while the new link comes up and
		// resolves its neighbour: send until some arrive.
		for try := 1; ; try++ {
			res, err := traffic.Measure(context.Background(), traffic.Flow{
				Proto:       traffic.UDP,
				ClientNetns: i.Spec.NetnsPath(prefix + "ns1"),
				ServerNetns: i.Spec.NetnsPath(prefix + "c1"),
				Server:      netip.MustParseAddrPort("198.18.9.2:5099"),
				Packets:     100, Rate: 2000,
			})
			if err == nil && res.Received.Packets > 0 {
				break
			}
			if try == 10 {
				scrapeErr = fmt.Errorf("traffic over the rogue link: %v (%+v)", err, res)
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
		// The agent folds counts in at scrape time; poll until the
		// violation shows.
		deadline := time.Now().Add(15 * time.Second)
		for {
			live, scrapeErr = scrapeFamilies(i.MetricsURL)
			if scrapeErr == nil && live["nsflow_isolation_violation_packets_total"] != nil {
				return
			}
			if time.Now().After(deadline) {
				if scrapeErr == nil {
					scrapeErr = fmt.Errorf("no nsflow_isolation_violation_packets_total after 15s; got %v", slices.Sorted(maps.Keys(live)))
				}
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	spec, err := demo.DefaultSpec()
	if err != nil {
		t.Fatal(err)
	}
	built, err := spec.WithPrefix(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { topology.Down(context.Background(), built, topology.Options{}) })
	if _, err := demo.Run(context.Background(), demo.Options{
		Prefix: prefix, Duration: 3 * time.Second, ListenAddress: "127.0.0.1:0", Started: started, Out: &tlog{t: t},
	}); err != nil {
		t.Fatalf("demo: %v", err)
	}
	if scrapeErr != nil {
		t.Fatal(scrapeErr)
	}

	// The contract holds: every metric with exactly its labels.
	for name, labels := range agentMetrics {
		got, ok := live[name]
		if !ok {
			t.Errorf("contract metric %s is not in the live scrape", name)
			continue
		}
		if !slices.Equal(got, slices.Sorted(slices.Values(labels))) {
			t.Errorf("%s: live labels %v, contract %v", name, got, labels)
		}
	}
	// The rules and the dashboard use only what is live.
	liveKnown := map[string][]string{}
	for name, labels := range live {
		liveKnown[name] = labels
	}
	for name, expr := range ruleExprs(t) {
		refs, err := parsePromQL(expr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, p := range checkRefs(liveKnown, refs) {
			t.Errorf("rule %s: %s (live scrape)", name, p)
		}
	}
	for where, refs := range dashboardQueries(t, loadDashboard(t)) {
		for _, p := range checkRefs(liveKnown, refs) {
			t.Errorf("dashboard %s: %s (live scrape)", where, p)
		}
	}
}

// scrapeFamilies fetches a /metrics page and returns each metric's sorted
// label names.
func scrapeFamilies(url string) (map[string][]string, error) {
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", url, err)
	}
	out := map[string][]string{}
	for name, mf := range mfs {
		set := map[string]bool{}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				set[l.GetName()] = true
			}
		}
		out[name] = slices.Sorted(maps.Keys(set))
	}
	return out, nil
}

// rogueLink wires namespaces a and b directly with a veth pair the
// topology does not declare (198.18.9.1/30 in a, .2/30 in b), as a
// misconfiguration would.
func rogueLink(s *topology.Spec, a, b string) error {
	ha, err := netns.GetFromPath(s.NetnsPath(a))
	if err != nil {
		return err
	}
	defer ha.Close()
	hb, err := netns.GetFromPath(s.NetnsPath(b))
	if err != nil {
		return err
	}
	defer hb.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: "rogue0", Namespace: netlink.NsFd(ha)},
		PeerName:      "rogue1",
		PeerNamespace: netlink.NsFd(hb),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("rogue veth: %w", err)
	}
	for _, end := range []struct {
		ns   netns.NsHandle
		name string
		addr string
	}{{ha, "rogue0", "198.18.9.1/30"}, {hb, "rogue1", "198.18.9.2/30"}} {
		h, err := netlink.NewHandleAt(end.ns)
		if err != nil {
			return err
		}
		defer h.Close()
		l, err := h.LinkByName(end.name)
		if err != nil {
			return err
		}
		addr, err := netlink.ParseAddr(end.addr)
		if err != nil {
			return err
		}
		if err := h.AddrAdd(l, addr); err != nil {
			return fmt.Errorf("%s: %w", end.name, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("%s up: %w", end.name, err)
		}
	}
	return nil
}

// tlog shows the demo's output in the test log, a line at a time.
type tlog struct {
	t   *testing.T
	buf []byte
}

func (l *tlog) Write(p []byte) (int, error) {
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		l.t.Log(string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
}
