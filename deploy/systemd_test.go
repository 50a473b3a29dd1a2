package deploy

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/agent"
	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/prometheus/exporter-toolkit/web"
)

const (
	systemdUnit = "systemd/nsflow.service"
	webConfig   = "systemd/web-config.yml"
	// unitBinary is where the unit expects the binary.
	unitBinary = "/usr/local/bin/nsflow"
)

// unitFile maps "Section.Key" to its values in order (a key may repeat).
type unitFile map[string][]string

// parseUnit reads a systemd unit: sections, Key=Value lines, comments and
// backslash continuations.
func parseUnit(src string) (unitFile, error) {
	u := unitFile{}
	section := ""
	var pending string
	for i, line := range strings.Split(src, "\n") {
		line = strings.TrimSpace(line)
		if pending == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if cont, ok := strings.CutSuffix(line, "\\"); ok {
			pending += strings.TrimSpace(cont) + " "
			continue
		}
		line, pending = pending+line, ""
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			return nil, fmt.Errorf("line %d: %q is not Key=Value inside a section", i+1, line)
		}
		key := section + "." + strings.TrimSpace(k)
		u[key] = append(u[key], strings.TrimSpace(v))
	}
	return u, nil
}

func (u unitFile) get(key string) string { return strings.Join(u[key], " ") }

func loadUnit(t *testing.T) unitFile {
	t.Helper()
	u, err := parseUnit(string(readFile(t, systemdUnit)))
	if err != nil {
		t.Fatalf("%s: %v", systemdUnit, err)
	}
	return u
}

func TestSystemdUnitHardening(t *testing.T) {
	u := loadUnit(t)
	var want []string
	for _, c := range agentCapabilities {
		want = append(want, "CAP_"+c)
	}
	got := strings.Fields(u.get("Service.CapabilityBoundingSet"))
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("CapabilityBoundingSet %v, want exactly %v", got, want)
	}
	for key, value := range map[string]string{
		"Service.NoNewPrivileges": "yes",
		"Service.ProtectSystem":   "strict",
		"Service.ReadWritePaths":  filepath.Dir(bpf.DefaultPinPath),
		// The state file lives in /run/nsflow, kept across restarts.
		"Service.RuntimeDirectory":         filepath.Base(filepath.Dir(agent.DefaultStateFile)),
		"Service.RuntimeDirectoryPreserve": "yes",
		"Service.ProtectHome":              "yes",
		"Service.PrivateTmp":               "yes",
		"Service.PrivateDevices":           "yes",
		"Service.ProtectKernelTunables":    "yes",
		"Service.ProtectKernelModules":     "yes",
		"Service.ProtectControlGroups":     "yes",
		"Service.RestrictNamespaces":       "net",
		"Service.RestrictSUIDSGID":         "yes",
		"Service.MemoryDenyWriteExecute":   "yes",
		"Service.LockPersonality":          "yes",
		"Service.SystemCallArchitectures":  "native",
		"Install.WantedBy":                 "multi-user.target",
	} {
		if got := u.get(key); got != value {
			t.Errorf("%s=%q, want %q", key, got, value)
		}
	}
	// The syscall allow list must keep what the agent calls beyond
	// @system-service: bpf(2) and perf_event_open(2).
	allow := strings.Fields(u["Service.SystemCallFilter"][0])
	for _, sc := range []string{"@system-service", "bpf", "perf_event_open"} {
		if !slices.Contains(allow, sc) {
			t.Errorf("SystemCallFilter allow list %v lacks %s", allow, sc)
		}
	}
	exec := strings.Fields(u.get("Service.ExecStart"))
	if len(exec) < 2 || exec[0] != unitBinary || exec[1] != "agent" {
		t.Errorf("ExecStart %v: want %s agent ...", exec, unitBinary)
	}
	if flagValue(exec, "--web.config.file") != "/etc/nsflow/web-config.yml" {
		t.Errorf("ExecStart %v: want --web.config.file=/etc/nsflow/web-config.yml", exec)
	}
}

// TestSystemdAnalyze has systemd itself check the unit (syntax, known
// settings) and score its exposure.
func TestSystemdAnalyze(t *testing.T) {
	sa := requireTool(t, "systemd-analyze", "systemd")
	// verify wants ExecStart's binary to exist: point it at this test.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(t.TempDir(), "nsflow.service")
	src := strings.ReplaceAll(string(readFile(t, systemdUnit)), unitBinary, self)
	if err := os.WriteFile(unit, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := run(t, sa, "verify", "--man=no", unit); strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify warns:\n%s", out)
	}
	// Exposure is 0-100 (shown as 0.0-10.0); 40 and below rates "OK".
	out := run(t, sa, "security", "--offline=yes", "--threshold=40", unit)
	t.Logf("systemd-analyze security: %s", lastLine(out))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// exampleWebConfig writes the example web config with its key pair swapped
// for a throwaway one, and returns its path and a pool that trusts the
// certificate.
func exampleWebConfig(t *testing.T) (cfgFile string, pool *x509.CertPool) {
	t.Helper()
	dir := t.TempDir()
	certFile, keyFile, pool := testenv.SelfSignedCert(t, dir)
	cfg := strings.NewReplacer("/etc/nsflow/tls.crt", certFile, "/etc/nsflow/tls.key", keyFile).
		Replace(string(readFile(t, webConfig)))
	cfgFile = filepath.Join(dir, "web-config.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgFile, pool
}

// TestWebConfigExample serves HTTP with the example web config through the
// exporter toolkit the agent uses (its cert paths swapped for a throwaway
// key pair): TLS is required, and the documented user and password work.
func TestWebConfigExample(t *testing.T) {
	cfgFile, pool := exampleWebConfig(t)
	if err := web.Validate(cfgFile); err != nil {
		t.Fatalf("%s: %v", webConfig, err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			io.WriteString(w, "ok")
		}),
		// The plain-HTTP probe below makes a handshake error on purpose.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	flags := &web.FlagConfig{WebConfigFile: &cfgFile, WebListenAddresses: &[]string{ln.Addr().String()}}
	go web.Serve(ln, srv, flags, slog.New(slog.DiscardHandler))
	t.Cleanup(func() { srv.Close() })

	url := "https://" + ln.Addr().String() + "/"
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}}}
	tests := []struct {
		name       string
		user, pass string
		want       int
	}{
		{"documented credentials", "prometheus", "change-me", http.StatusOK},
		{"wrong password", "prometheus", "wrong", http.StatusUnauthorized},
		{"no credentials", "", "", http.StatusUnauthorized},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest("GET", url, nil)
		if tt.user != "" {
			req.SetBasicAuth(tt.user, tt.pass)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
	}
	// Plain HTTP must not be served.
	if resp, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + ln.Addr().String() + "/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP answered 200; the example config must require TLS")
		}
	}
}

// The unit's RuntimeDirectory must be where the agent keeps its state.
func TestStateDirUnderRun(t *testing.T) {
	if dir := filepath.Dir(agent.DefaultStateFile); filepath.Dir(dir) != "/run" {
		t.Errorf("the agent's state moved to %s: update RuntimeDirectory in %s", dir, systemdUnit)
	}
}

func TestParseUnit(t *testing.T) {
	u, err := parseUnit("[A]\n# c\nK=1\nK=2\nL=a \\\n  b\n")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(u["A.K"], []string{"1", "2"}) || u.get("A.L") != "a b" {
		t.Errorf("got %v", u)
	}
	if _, err := parseUnit("K=1\n"); err == nil {
		t.Error("a key outside a section: want an error")
	}
}
