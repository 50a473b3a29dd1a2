package verify

import (
	"slices"
	"testing"

	"github.com/nsflow/nsflow/topology"
)

// A port-space check tells of its own port's other holders only.
func TestBusyOn(t *testing.T) {
	r := &Responder{Busy: []string{"tcp4/8080", "udp4/8080", "udp6/8080", "tcp6/80", "udp4/80800"}}
	for _, tc := range []struct {
		port topology.Port
		want []string
	}{
		{topology.Port{Proto: "udp", Number: 8080}, []string{"udp4/8080", "udp6/8080"}},
		{topology.Port{Proto: "tcp", Number: 8080}, []string{"tcp4/8080"}},
		{topology.Port{Proto: "tcp", Number: 80}, []string{"tcp6/80"}},
		{topology.Port{Proto: "udp", Number: 80}, nil},
	} {
		if got := busyOn(r, tc.port); !slices.Equal(got, tc.want) {
			t.Errorf("busyOn(%s) = %v, want %v", tc.port, got, tc.want)
		}
	}
	if got := busyOn(nil, topology.Port{Proto: "tcp", Number: 8080}); got != nil {
		t.Errorf("no responder: %v", got)
	}
}
