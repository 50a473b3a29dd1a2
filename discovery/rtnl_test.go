package discovery

import (
	"net/netip"
	"testing"
)

func TestSubnetBroadcast(t *testing.T) {
	for _, tt := range []struct {
		addr string
		bits int
		want string // "" for none
	}{
		{"198.18.7.1", 24, "198.18.7.255"},
		{"198.18.7.1", 16, "198.18.255.255"},
		{"198.18.7.129", 25, "198.18.7.255"},
		{"198.18.7.1", 25, "198.18.7.127"},
		{"198.18.7.1", 30, "198.18.7.3"},
		{"198.18.7.1", 31, ""}, // point-to-point: no broadcast
		{"198.18.7.1", 32, ""},
		{"198.18.7.1", 0, ""},
		{"fd00::1", 64, ""}, // IPv6 has no broadcast
	} {
		got, ok := Addr{Addr: netip.MustParseAddr(tt.addr), Bits: tt.bits}.SubnetBroadcast()
		if tt.want == "" {
			if ok {
				t.Errorf("%s/%d: broadcast %s, want none", tt.addr, tt.bits, got)
			}
			continue
		}
		if !ok || got != netip.MustParseAddr(tt.want) {
			t.Errorf("%s/%d: broadcast %s (%v), want %s", tt.addr, tt.bits, got, ok, tt.want)
		}
	}
}
