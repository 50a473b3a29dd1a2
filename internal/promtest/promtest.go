// Package promtest runs a real Prometheus server for the tests that check
// what Prometheus makes of the agent's metrics, alerts and dashboards.
package promtest

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Server is a Prometheus process started by Start.
type Server struct {
	URL    string // base URL, http://127.0.0.1:port
	client *http.Client
}

// Start runs the prometheus binary bin with config (the text of a
// prometheus.yml) and args on a free loopback port, and returns once it
// answers ready. It is stopped when the test ends; its log is shown if the
// test failed.
func Start(t testing.TB, bin string, config []byte, args ...string) *Server {
	t.Helper()
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, config, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	// A file, not a buffer: the log is read while the process may still
	// write to it.
	logFile := filepath.Join(dir, "prometheus.log")
	logf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"--config.file=" + cfgFile, "--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + addr}, args...)
	cmd := exec.Command(bin, argv...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	log := func() string {
		b, _ := os.ReadFile(logFile)
		return string(b)
	}
	t.Cleanup(func() {
		// SIGTERM lets it shut down its TSDB cleanly; kill if it hangs.
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		logf.Close()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", log())
		}
	})
	s := &Server{URL: "http://" + addr, client: &http.Client{Timeout: 10 * time.Second}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := s.client.Get(s.URL + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 30s: %v\n%s", err, log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// API calls a Prometheus HTTP API endpoint and decodes the data of a
// successful answer into data.
func (s *Server) API(path string, params url.Values, data any) error {
	resp, err := s.client.Get(s.URL + path + "?" + params.Encode())
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("%s: %s: %w", path, resp.Status, err)
	}
	if body.Status != "success" {
		return fmt.Errorf("%s %v: %s", path, params, body.Error)
	}
	return json.Unmarshal(body.Data, data)
}
