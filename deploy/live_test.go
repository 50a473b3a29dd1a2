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
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestLiveScrape checks the deployment files against a real agent and a
// real Prometheus: the demo's agent on the seed topology with its traffic,
// plus a rogue veth between two namespaces that the isolation section
// keeps apart, so that the violation counter exists. Every metric and
// label the rules and the dashboard use must be in the agent's scrape, and
// so must every metric of the contract (agentMetrics) with its labels.
// Prometheus, run with deploy/prometheus/prometheus.yml pointed at the
// agent, must fire NsflowIsolationViolation for a one-off violation over
// the rogue link (40 packets at once, after Prometheus has watched the
// agent: the pair's series is born with its whole count and never rises),
// the dashboard's "Violating packets" must count them, and every dashboard
// query must be answered, with data for the panels that must show some.
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

// oneOffPackets is the size of the one-off violation: the tester's 40
// packets over a rogue veth that fired nothing.
const oneOffPackets = 40

// whileDemoRuns wires the rogue link and checks, against a real
// Prometheus, that a one-off violation fires NsflowIsolationViolation and
// shows on the dashboard: a burst sent between two scrapes, after
// Prometheus has watched the agent, so that the pair's series is born
// with its whole count and never changes. It returns the scrape's metric
// names and labels.
func whileDemoRuns(t *testing.T, i demo.Info, prefix, promBin string) (map[string][]string, error) {
	src, dst := prefix+"ns1", prefix+"c1"
	// The demo's isolation check probes every pair, over the rogue link
	// too once it is there: wire it after the probes.
	select {
	case <-i.Verified:
	case <-time.After(60 * time.Second):
		return nil, fmt.Errorf("the demo's isolation check did not finish in 60s")
	}
	if err := rogueLink(i.Spec, src, dst); err != nil {
		return nil, err
	}
	// Traffic the other way first (dst to src is denied too): the agent
	// has attached to the new link and counts on it, and the neighbours
	// are resolved, before the pair under test sends anything. The first
	// datagrams may be lost while the link comes up: send until some
	// arrive, then until the agent exports the pair.
	back := traffic.Flow{
		Proto:       traffic.UDP,
		ClientNetns: i.Spec.NetnsPath(dst),
		ServerNetns: i.Spec.NetnsPath(src),
		Server:      netip.MustParseAddrPort("198.18.9.1:5099"),
		Rate:        300,
		Packets:     50,
	}
	for try := 1; ; try++ {
		res, err := traffic.Measure(context.Background(), back)
		if err == nil && res.Received.Packets > 0 {
			break
		}
		if try == 10 {
			return nil, fmt.Errorf("traffic over the rogue link: %v (%+v)", err, res)
		}
		time.Sleep(200 * time.Millisecond)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		v, err := scrapeViolations(i.MetricsURL)
		if err == nil && v[[2]string{dst, src}] > 0 {
			if v[[2]string{src, dst}] != 0 {
				return nil, fmt.Errorf("%s to %s counted before its burst: %v", src, dst, v)
			}
			break
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("no violation %s to %s after 15s; got %v", dst, src, v)
			}
			return nil, err
		}
		time.Sleep(500 * time.Millisecond)
	}

	target := strings.TrimSuffix(strings.TrimPrefix(i.MetricsURL, "http://"), "/metrics")
	prom := startPrometheus(t, promBin, target)
	pair := fmt.Sprintf(`nsflow_isolation_violation_packets_total{src_netns=%q,dst_netns=%q}`, src, dst)
	// Two successful scrapes, then the burst halfway between two more:
	// the 1s scrape interval leaves half a second either side of it, so
	// the agent counts all of it in one scrape.
	var last float64
	deadline = time.Now().Add(30 * time.Second)
	for {
		n, err := prom.value(`sum_over_time(up{job="nsflow"}[1m])`)
		if err == nil && n >= 2 {
			if last, err = prom.value(`timestamp(up{job="nsflow"})`); err == nil {
				break
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("Prometheus did not scrape the agent twice in 30s: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n, err := prom.query(pair); err != nil || n != 0 {
		return nil, fmt.Errorf("%s before the burst: %d series, %v", pair, n, err)
	}
	at := time.UnixMilli(int64(last * 1000)).Add(1500 * time.Millisecond)
	for time.Until(at) < 100*time.Millisecond {
		at = at.Add(time.Second)
	}
	time.Sleep(time.Until(at))
	burst := back
	burst.ClientNetns, burst.ServerNetns = back.ServerNetns, back.ClientNetns
	burst.Server = netip.MustParseAddrPort("198.18.9.2:5099")
	burst.Rate, burst.Packets = 0, oneOffPackets
	if res, err := traffic.Measure(context.Background(), burst); err != nil || res.Received.Packets == 0 {
		return nil, fmt.Errorf("the one-off burst %s to %s: %v (%+v)", src, dst, err, res)
	}

	var count float64
	deadline = time.Now().Add(10 * time.Second)
	for {
		var err error
		if count, err = prom.value(pair); err == nil && count > 0 {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("Prometheus has no %s 10s after the burst: %v", pair, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// What the finding was about: the series was born with its whole
	// count and never rose, so increase() alone reads 0. If it rose, the
	// burst straddled a scrape and this test did not check a one-off.
	if n, err := prom.query(`changes(` + pair + `[1h]) > 0 or increase(` + pair + `[5m]) > 0`); err != nil || n != 0 {
		t.Errorf("%s rose after its first sample (%d series, %v): not a one-off", pair, n, err)
	}
	got, err := prom.waitAlert("NsflowIsolationViolation", map[string]string{"src_netns": src, "dst_netns": dst}, 30*time.Second)
	if err != nil {
		t.Error(err)
	} else if got != count {
		t.Errorf("NsflowIsolationViolation value %v, want the %v packets the agent counted", got, count)
	}
	// The dashboard's stat counts it too.
	for _, p := range loadDashboard(t).allPanels() {
		if p.Title != "Violating packets" {
			continue
		}
		if v, err := prom.value(grafanaVars.Replace(p.Targets[0].Expr)); err != nil || v < count {
			t.Errorf("panel %q reads %v (%v), want at least the %v one-off packets", p.Title, v, err, count)
		}
	}
	checkDashboardOnPrometheus(t, prom)
	return scrapeFamilies(i.MetricsURL)
}

// scrape fetches and parses a /metrics page.
func scrape(url string) (map[string]*dto.MetricFamily, error) {
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
	return mfs, nil
}

// scrapeViolations returns the agent's violation counters by
// [src_netns, dst_netns].
func scrapeViolations(url string) (map[[2]string]float64, error) {
	mfs, err := scrape(url)
	if err != nil {
		return nil, err
	}
	out := map[[2]string]float64{}
	for _, m := range mfs["nsflow_isolation_violation_packets_total"].GetMetric() {
		var k [2]string
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "src_netns":
				k[0] = l.GetValue()
			case "dst_netns":
				k[1] = l.GetValue()
			}
		}
		out[k] = m.GetCounter().GetValue()
	}
	return out, nil
}

// scrapeFamilies fetches a /metrics page and returns each metric's sorted
// label names.
func scrapeFamilies(url string) (map[string][]string, error) {
	mfs, err := scrape(url)
	if err != nil {
		return nil, err
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
