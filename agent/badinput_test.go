package agent

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/testenv"
)

// TestBadInput runs the agent binary with bad flags and files: each
// fails fast with a non-zero status and a message naming what is wrong,
// and leaves nothing behind.
func TestBadInput(t *testing.T) {
	testenv.RequireRoot(t)
	bin := testenv.NsflowBinary(t)
	dir := t.TempDir()
	garbage := filepath.Join(dir, "web.yml")
	if err := os.WriteFile(garbage, []byte("tls_server_config: [not, a, map\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	notBPF := filepath.Join(dir, "pins", "nsflow")
	// A pin path another agent holds (its lock taken here), and one free.
	held, _ := pins(t)
	lock, _, err := lockPinPath(held)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	free, _ := pins(t)
	// A state file another agent holds (its lock taken here).
	free2, heldState := pins(t)
	stateLock, err := lockStateFile(heldState)
	if err != nil {
		t.Fatal(err)
	}
	defer stateLock.Close()
	for _, tc := range []struct {
		name   string
		status int // 2: a bad flag value; 1: a file or address that does not work
		args   []string
		want   string // in stderr
	}{
		{"unknown flag", 2, []string{"--no-such-flag"}, "unknown flag: --no-such-flag"},
		{"log level", 2, []string{"--log.level=loud"}, "--log.level"},
		{"log format", 2, []string{"--log.format=xml"}, "--log.format"},
		{"attach mode", 2, []string{"--bpf.attach-mode=xdp"}, `--bpf.attach-mode: unknown mode "xdp"`},
		{"netns regexp", 2, []string{"--netns.include=("}, "--netns.include"},
		{"interface regexp", 2, []string{"--interface.exclude=[a-"}, "--interface.exclude"},
		{"telemetry path", 2, []string{"--web.telemetry-path=metrics"}, "--web.telemetry-path"},
		{"telemetry path taken", 2, []string{"--web.telemetry-path=/-/healthy"}, `--web.telemetry-path "/-/healthy"`},
		{"telemetry path of pprof", 2, []string{"--web.telemetry-path=/debug/pprof/profile"}, `--web.telemetry-path "/debug/pprof/profile"`},
		{"telemetry path pattern", 2, []string{"--web.telemetry-path=/{x}"}, `--web.telemetry-path "/{x}"`},
		{"telemetry path space", 2, []string{"--web.telemetry-path=/a b"}, `--web.telemetry-path "/a b"`},
		{"telemetry path unclean", 2, []string{"--web.telemetry-path=/a/../metrics"}, `--web.telemetry-path "/a/../metrics"`},
		{"missing web config", 1, []string{"--web.config.file=" + filepath.Join(dir, "nope.yml")}, "nope.yml"},
		{"garbage web config", 1, []string{"--web.config.file=" + garbage}, "web.yml"},
		{"bpffs not mounted", 1, []string{"--bpf.pin-path=" + notBPF}, "mount -t bpf bpf /sys/fs/bpf"},
		{"idle timeout", 2, []string{"--flows.idle-timeout=10ms"}, "--flows.idle-timeout: 10ms is shorter than 1s"},
		{"zero idle timeout", 2, []string{"--flows.idle-timeout=0"}, "--flows.idle-timeout: 0s is shorter than 1s"},
		{"zero flow table", 2, []string{"--flows.max=0"}, "--flows.max: 0 is no flow table"},
		{"top flows", 2, []string{"--collector.top-flows=-1"}, "--collector.top-flows -1"},
		{"listen address", 1, []string{"--web.listen-address=256.0.0.1:1"}, "--web.listen-address"},
		{"pin path in use", 1, []string{"--bpf.pin-path=" + held, "--state.file=" + filepath.Join(dir, "s.json")}, "pin path " + held + " is in use by another nsflow agent"},
		{"state file not writable", 1, []string{"--bpf.pin-path=" + free, "--state.file=/proc/nope/state.json"}, "state file /proc/nope/state.json cannot be written"},
		{"state file in use", 1, []string{"--bpf.pin-path=" + free2, "--state.file=" + heldState}, "state file " + heldState + " is in use by another nsflow agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"agent", "--web.listen-address=127.0.0.1:0", "--netns.include=^$"}, tc.args...)
			cmd := exec.Command(bin, args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				t.Fatalf("still running after 10s; stderr:\n%s", stderr.String())
			}
			if got := cmd.ProcessState.ExitCode(); got != tc.status {
				t.Fatalf("exit status %d, want %d; stderr:\n%s", got, tc.status, stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr lacks %q:\n%s", tc.want, stderr.String())
			}
			if strings.Contains(stderr.String(), "panic") {
				t.Errorf("panicked:\n%s", stderr.String())
			}
		})
	}
	if _, err := os.Stat(notBPF); err == nil {
		t.Errorf("pin directory %s created on a non-bpf filesystem", notBPF)
	}
	for _, dir := range []string{free, free2} {
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("a refused start left the pin directory %s it created", dir)
		}
	}
}

// TestVanishingNamespaces deletes namespaces while the agent is still
// setting them up or attaching: each is a logged, counted skip, never a
// crash, and the agent keeps working afterwards.
func TestVanishingNamespaces(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("av")
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state})
	for i := range 40 {
		ns := fmt.Sprintf("%sv%d", p, i)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		if err := ipCmd("netns", "add", ns); err != nil {
			t.Fatal(err)
		}
		if err := ipCmd("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"); err != nil {
			t.Fatal(err)
		}
		if err := ipCmd("netns", "del", ns); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for i := range 40 {
		for r.a.tracked(fmt.Sprintf("%sv%d", p, i)) {
			if time.Now().After(deadline) {
				t.Fatalf("%sv%d still tracked", p, i)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// Still alive and attaching.
	ns := p + "ok"
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if err := ipCmd("netns", "add", ns); err != nil {
		t.Fatal(err)
	}
	if err := ipCmd("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"); err != nil {
		t.Fatal(err)
	}
	for {
		_, ok0 := r.a.attachedPort(ns, "eth0")
		_, ok1 := r.a.attachedPort(ns, "eth1")
		if ok0 && ok1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not attach after the vanishing namespaces: %s", r.a.describe(ns))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("attach errors counted: %d", r.a.Self().AttachErrors)
	if !strings.Contains(scrape(t, r.url), "nsflow_attach_errors_total") {
		t.Error("nsflow_attach_errors_total not exported")
	}
}
