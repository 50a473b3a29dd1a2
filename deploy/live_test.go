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
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/demo"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/traffic"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestLiveScrape checks the deployment files against a real agent and a
// real Prometheus: the demo's agent on the seed topology with its traffic,
// plus a rogue veth between two namespaces that the isolation section
// keeps apart, so that the violation counter exists and grows. Every metric
// and label the rules and the dashboard use must be in the agent's scrape,
// and so must every metric of the contract (agentMetrics) with its labels.
// Prometheus, run with deploy/prometheus/prometheus.yml pointed at the
// agent, must fire NsflowIsolationViolation for the rogue pair and answer
// every dashboard query, with data for the panels that must show some.
func TestLiveScrape(t *testing.T) {
	testenv.RequireBPFFS(t)
	promBin := requireTool(t, "prometheus", "prometheus")
	prefix := testenv.Name("dp") + "-"
	var live map[string][]string
	var liveErr error
	started := func(i demo.Info) { live, liveErr = whileDemoRuns(t, i, prefix, promBin) }

	spec, err := demo.DefaultSpec()
	if err != nil {
		t.Fatal(err)
	}
	topotest.DownAtCleanup(t, spec, prefix)
	if _, err := demo.Run(context.Background(), demo.Options{
		Prefix: prefix, Duration: time.Second, ListenAddress: "127.0.0.1:0", Started: started, Out: &tlog{t: t},
	}); err != nil {
		t.Fatalf("demo: %v", err)
	}
	if liveErr != nil {
		t.Fatal(liveErr)
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
	for name, expr := range ruleExprs(t) {
		refs, err := parsePromQL(expr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, p := range checkRefs(live, refs) {
			t.Errorf("rule %s: %s (live scrape)", name, p)
		}
	}
	for where, refs := range dashboardQueries(t, loadDashboard(t)) {
		for _, p := range checkRefs(live, refs) {
			t.Errorf("dashboard %s: %s (live scrape)", where, p)
		}
	}
}

// whileDemoRuns wires the rogue link, keeps traffic on it, scrapes the
// agent until the violation shows, then checks Prometheus. It returns the
// scrape's metric names and labels.
func whileDemoRuns(t *testing.T, i demo.Info, prefix, promBin string) (map[string][]string, error) {
	src, dst := prefix+"ns1", prefix+"c1"
	if err := rogueLink(i.Spec, src, dst); err != nil {
		return nil, err
	}
	rogue := traffic.Flow{
		Proto:       traffic.UDP,
		ClientNetns: i.Spec.NetnsPath(src),
		ServerNetns: i.Spec.NetnsPath(dst),
		Server:      netip.MustParseAddrPort("198.18.9.2:5099"),
		Rate:        300,
	}
	// The first datagrams may be lost while the new link comes up and
	// resolves its neighbour: send until some arrive.
	for try := 1; ; try++ {
		probe := rogue
		probe.Packets = 50
		res, err := traffic.Measure(context.Background(), probe)
		if err == nil && res.Received.Packets > 0 {
			break
		}
		if try == 10 {
			return nil, fmt.Errorf("traffic over the rogue link: %v (%+v)", err, res)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Then steadily, so that the violation counter grows while
	// Prometheus watches.
	run, err := traffic.Start(context.Background(), rogue)
	if err != nil {
		return nil, err
	}
	defer run.Stop()

	var live map[string][]string
	deadline := time.Now().Add(15 * time.Second)
	for {
		live, err = scrapeFamilies(i.MetricsURL)
		if err == nil && live["nsflow_isolation_violation_packets_total"] != nil {
			break
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("no nsflow_isolation_violation_packets_total after 15s; got %v", slices.Sorted(maps.Keys(live)))
			}
			return nil, err
		}
		time.Sleep(500 * time.Millisecond)
	}

	target := strings.TrimSuffix(strings.TrimPrefix(i.MetricsURL, "http://"), "/metrics")
	prom := startPrometheus(t, promBin, target)
	if err := prom.waitAlert("NsflowIsolationViolation", map[string]string{"src_netns": src, "dst_netns": dst}, 60*time.Second); err != nil {
		return nil, err
	}
	checkDashboardOnPrometheus(t, prom)
	return live, nil
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
