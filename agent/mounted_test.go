package agent

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
	"golang.org/x/sys/unix"
)

// TestMountHeldNamespace: a namespace that only a bind mount outside
// /run/netns holds (no name, no process: `unshare --net=FILE`, a
// runtime's own directory) is found, entered through its mount, and its
// veth counted exactly, like any other.
func TestMountHeldNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	dir := t.TempDir()
	held := func(name string) (path string, ino uint64) {
		path = filepath.Join(dir, name)
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("unshare", "--net="+path, "true").CombinedOutput(); err != nil {
			t.Fatalf("unshare --net=%s: %v: %s", path, err, out)
		}
		t.Cleanup(func() { unix.Unmount(path, unix.MNT_DETACH) })
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return path, st.Ino
	}
	a, inoA := held("a")
	b, _ := held("b")
	ifA, ifB := testenv.Name("mha"), testenv.Name("mhb")
	for _, args := range [][]string{
		{"-n", a, "link", "add", ifA, "type", "veth", "peer", "name", ifB, "netns", b},
		{"-n", a, "addr", "add", "198.18.77.1/30", "dev", ifA},
		{"-n", b, "addr", "add", "198.18.77.2/30", "dev", ifB},
		{"-n", a, "link", "set", ifA, "up"},
		{"-n", b, "link", "set", ifB, "up"},
	} {
		// ip -n takes a name under /run/netns only; nsenter takes a file.
		cmd := exec.Command("nsenter", append([]string{"--net=" + args[1], "ip"}, args[2:]...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", cmd.Args, err, out)
		}
	}

	// A socket in b, so that no port-unreachable answer ends the sending.
	var sink *net.UDPConn
	if err := nsenter.Do(b, func() (err error) {
		sink, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(198, 18, 77, 2), Port: 9})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sink.Close()

	label := fmt.Sprintf("netns-%d", inoA)
	r := startAgent(t, label, Config{})
	const n = 25
	sendDatagrams(t, a, netip.MustParseAddrPort("198.18.77.2:9"), n)
	waitLine(t, r.url, fmt.Sprintf(`nsflow_interface_transmit_packets_total{family="ipv4",interface=%q,netns=%q} %d`, ifA, label, n), ifA)
}
