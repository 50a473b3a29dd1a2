package agent

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/vishvananda/netns"
)

// retireTopology puts three namespaces on one bridge.
const retireTopology = `
name: retire
namespaces:
  - name: a
  - name: b
  - name: c
  - name: sw
bridges:
  - name: br0
    namespace: sw
links:
  - endpoints:
      - {namespace: a, interface: eth0, addresses: [198.18.46.1/24]}
      - {bridge: br0, interface: pa}
  - endpoints:
      - {namespace: b, interface: eth0, addresses: [198.18.46.2/24]}
      - {bridge: br0, interface: pb}
  - endpoints:
      - {namespace: c, interface: eth0, addresses: [198.18.46.3/24]}
      - {bridge: br0, interface: pc}
`

// TestGoneRetention: the series of a namespace that is gone (a -> c
// after c is deleted) leave /metrics and the state file once the
// retention is over; those of namespaces that live (a -> b) stay, with
// their counts.
func TestGoneRetention(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ar")
	s := topotest.Up(t, parseSpec(t, retireTopology), p)
	pin, state := pins(t)
	const retention = 3 * time.Second
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, FlowIdleTimeout: 2 * time.Second, GoneRetention: retention})
	waitReady(t, r)

	const n = 100
	a, b, c := p+"a", p+"b", p+"c"
	sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.46.2:5401"), n, 100)
	sendUDP(t, s, a, c, netip.MustParseAddrPort("198.18.46.3:5401"), n, 100)
	series := func(dst string) string {
		return fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns=%q,protocol="udp",src_netns=%q} %d`, dst, a, n)
	}
	if text := scrape(t, r.url); !strings.Contains(text, series(b)) || !strings.Contains(text, series(c)) {
		t.Fatalf("want %s and %s; have:\n%s", series(b), series(c), grepLines(text, "nsflow_netns_flow_packets_total{"))
	}
	deleted := time.Now()
	if err := netns.DeleteNamed(c); err != nil {
		t.Fatal(err)
	}
	// c's records are folded at once (its port is gone), a's idle out in
	// 2 s; c's series stay, with their counts, for the retention after
	// the first pass that finds c gone, and then go.
	var text string
	for deadline := deleted.Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		text = scrape(t, r.url)
		if !strings.Contains(text, fmt.Sprintf("%q", c)) {
			break
		}
		if !strings.Contains(text, series(c)) {
			t.Fatalf("%s changed before it went:\n%s", series(c), grepLines(text, "nsflow_netns_flow_packets_total{"))
		}
		if time.Now().After(deadline) {
			t.Fatalf("series naming %s still there 20 s after it was deleted:\n%s", c, grepLines(text, c))
		}
	}
	if gone := time.Since(deleted); gone < retention {
		t.Errorf("%s's series went %v after it was deleted, before the retention of %v", c, gone, retention)
	}
	if !strings.Contains(text, series(b)) {
		t.Errorf("the live pair's series went too: want %s; have:\n%s", series(b), grepLines(text, "nsflow_netns_flow_packets_total{"))
	}
	saved, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(saved), fmt.Sprintf("%q", c)) || !strings.Contains(string(saved), fmt.Sprintf("%q", b)) {
		t.Errorf("state file should name %s and no longer %s:\n%s", b, c, saved)
	}
}

// TestRetireFoldedLabel: a label whose earlier holder went long ago, and
// which a namespace held again between two passes (it came and went), is
// live for the pass that folds the new holder's records: its totals stay
// for the retention from then, not dropped on the earlier holder's clock.
func TestRetireFoldedLabel(t *testing.T) {
	const retention = time.Minute
	for _, tc := range []struct {
		name   string
		folded []string
		kept   bool
	}{
		{"folded in this pass", []string{"ns-l"}, true},
		{"not folded", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := newFlowBook(Config{StateFile: filepath.Join(t.TempDir(), "state.json")})
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			k := pairKey{Src: UnknownNetns, Dst: "ns-l"}
			b.st.Pairs[k] = counter{Packets: 5}
			b.goneSince["ns-l"] = now.Add(-2 * retention) // the earlier holder's clock
			a := &Agent{cfg: Config{GoneRetention: retention}, book: b, log: slog.New(slog.DiscardHandler),
				byInode: map[uint64]*nsState{}, gone: map[uint64]goneNetns{}}
			a.retire(now, tc.folded...)
			if _, ok := b.st.Pairs[k]; ok != tc.kept {
				t.Errorf("pair kept %v, want %v", ok, tc.kept)
			}
			if _, ok := b.goneSince["ns-l"]; ok {
				t.Errorf("the label's clock is still running: %v", b.goneSince)
			}
		})
	}
}
