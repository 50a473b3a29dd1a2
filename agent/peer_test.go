package agent

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
)

// pairSpec is two namespaces joined by a veth pair; two of them with the
// same addresses are what isolated container networks look like (two
// topologies, since one topology rightly refuses duplicate addresses).
func pairSpec(name, x, y string) string {
	return fmt.Sprintf(`
name: %s
namespaces:
  - name: %s
  - name: %s
links:
  - endpoints:
      - {namespace: %s, interface: eth0, addresses: [198.18.60.1/30]}
      - {namespace: %s, interface: eth0, addresses: [198.18.60.2/30]}
`, name, x, y, x, y)
}

// TestOverlappingAddresses attributes traffic whose source address several
// namespaces hold to the one at the far end of the veth it came through.
func TestOverlappingAddresses(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ao")
	s := topotest.Up(t, parseSpec(t, pairSpec("ov1", "x1", "y1")), p)
	s2 := topotest.Up(t, parseSpec(t, pairSpec("ov2", "x2", "y2")), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state})

	const n1, n2 = 700, 300
	sendUDP(t, s, p+"x1", p+"y1", netip.MustParseAddrPort("198.18.60.2:5601"), n1, 100)
	sendUDP(t, s2, p+"x2", p+"y2", netip.MustParseAddrPort("198.18.60.2:5602"), n2, 100)
	want := map[string]string{
		fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns="%sy1",protocol="udp",src_netns="%sx1"}`, p, p): fmt.Sprint(n1),
		fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns="%sy2",protocol="udp",src_netns="%sx2"}`, p, p): fmt.Sprint(n2),
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		text := scrape(t, r.url)
		missing := 0
		for series, v := range want {
			if !strings.Contains(text, series+" "+v+"\n") {
				missing++
			}
		}
		if missing == 0 {
			if strings.Contains(text, `src_netns="unknown"`) {
				t.Errorf("some traffic attributed to unknown:\n%s", grepLines(text, "nsflow_netns_flow_packets_total"))
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %v, got:\n%s", want, grepLines(text, "nsflow_netns_flow_packets_total"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
