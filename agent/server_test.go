package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/bcrypt"
)

// TestWebConfigTLSBasicAuth serves through an exporter-toolkit web config
// with TLS and basic auth: a wrong password and plain HTTP are refused,
// the right password gets the metrics.
func TestWebConfigTLSBasicAuth(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := testenv.SelfSignedCert(t, dir)
	hash, err := bcrypt.GenerateFromPassword([]byte("right-horse"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webFile := filepath.Join(dir, "web.yml")
	conf := fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  prom: %s\n", certFile, keyFile, hash)
	if err := os.WriteFile(webFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	web := WebConfig{TelemetryPath: "/metrics", ConfigFile: webFile}
	if err := ValidateWebConfig(web); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: "nsflow_test_gauge", Help: "A test gauge."}))
	log := slog.New(slog.DiscardHandler)
	h, err := Handler(log, reg, web, func() bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, log, l, h, web) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	for _, tc := range []struct {
		name, scheme, user, password string
		want                         int
	}{
		{"right password", "https", "prom", "right-horse", http.StatusOK},
		{"wrong password", "https", "prom", "wrong-horse", http.StatusUnauthorized},
		{"unknown user", "https", "eve", "right-horse", http.StatusUnauthorized},
		{"no credentials", "https", "", "", http.StatusUnauthorized},
		{"plain http", "http", "prom", "right-horse", http.StatusBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest("GET", tc.scheme+"://"+l.Addr().String()+"/metrics", nil)
			if err != nil {
				t.Fatal(err)
			}
			if tc.user != "" {
				req.SetBasicAuth(tc.user, tc.password)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

func TestValidateTelemetryPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"/metrics", true},
		{"/metrics/", true},
		{"/nsflow/metrics", true},
		{"/a-b_c.d~e", true},
		{"", false},
		{"/", false},
		{"metrics", false},
		{"/-/healthy", false},
		{"/-/ready", false},
		{"/-", false},
		{"/debug/pprof", false},
		{"/debug/pprof/trace", false},
		{"/{x}", false},
		{"/a b", false},
		{"GET /metrics", false},
		{"/metrics?x=1", false},
		{"/a//b", false},
		{"/a/./b", false},
		{"/a/..", false},
	} {
		err := ValidateTelemetryPath(tc.path)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateTelemetryPath(%q) = %v, want ok %v", tc.path, err, tc.ok)
		}
	}
}
