package agent

import (
	"testing"

	"github.com/nsflow/nsflow/discovery"
)

// TestNamespacesInfoSkipsExited: a pid whose command could not be read
// (it exited between the scan and the read) is left out of the info
// labels, so pids and commands stay aligned.
func TestNamespacesInfoSkipsExited(t *testing.T) {
	for _, tt := range []struct {
		pids      []int
		comms     []string
		pid, comm string
	}{
		{[]int{10, 11, 12}, []string{"bash", "", "sleep"}, "10,12", "bash,sleep"},
		{[]int{10, 11}, []string{"sleep", "sleep"}, "10,11", "sleep"},
		{[]int{10}, []string{""}, "", ""},
		{nil, nil, "", ""},
	} {
		a := &Agent{byInode: map[uint64]*nsState{1: {label: "x", ns: discovery.Namespace{Inode: 1, Pids: tt.pids, Comms: tt.comms}}}}
		got := a.Namespaces()
		if len(got) != 1 || got[0].Pids != tt.pid || got[0].Comm != tt.comm {
			t.Errorf("pids %v, comms %q: info %+v, want pids %q, comm %q", tt.pids, tt.comms, got, tt.pid, tt.comm)
		}
	}
}
