package deploy

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/testenv"
)

// TestMain removes the nsflow binary the tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	testenv.RemoveBuilt()
	os.Exit(code)
}

// agentFlags returns the long flags `nsflow agent --help` lists.
func agentFlags(t *testing.T) map[string]bool {
	out := run(t, testenv.NsflowBinary(t), "agent", "--help")
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9.-]+)`).FindAllStringSubmatch(out, -1) {
		flags[m[1]] = true
	}
	if len(flags) < 5 {
		t.Fatalf("found %d flags in `nsflow agent --help`:\n%s", len(flags), out)
	}
	return flags
}

// checkFlags fails for every --flag in args that the agent does not know.
func checkFlags(t *testing.T, where string, args []string, known map[string]bool) {
	t.Helper()
	for _, a := range args {
		if name, ok := strings.CutPrefix(a, "--"); ok {
			name, _, _ = strings.Cut(name, "=")
			if !known[name] {
				t.Errorf("%s: nsflow agent has no flag --%s", where, name)
			}
		}
	}
}

// startAgent runs `nsflow <args>` with the listen address replaced by a
// free loopback port, restricted to a namespace label that matches nothing
// (so it touches no other test's namespaces) and without pins. It returns
// the address; the agent is stopped with SIGTERM at cleanup and must exit
// cleanly.
func startAgent(t *testing.T, args []string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	var argv []string
	for _, a := range args {
		if !strings.HasPrefix(a, "--web.listen-address") {
			argv = append(argv, a)
		}
	}
	argv = append(argv, "--web.listen-address="+addr, "--netns.include=^"+testenv.Name("none")+"$", "--bpf.pin=false")
	var stderr bytes.Buffer
	cmd := exec.Command(testenv.NsflowBinary(t), argv...)
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent %v exited with %v:\n%s", argv, err, stderr.String())
			}
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Errorf("agent did not stop on SIGTERM:\n%s", stderr.String())
		}
	})
	return addr
}

// get polls url until it answers want or the deadline passes.
func get(t *testing.T, client *http.Client, url, user, pass string, want int) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, _ := http.NewRequest("GET", url, nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == want {
				return string(body)
			}
			err = fmt.Errorf("%s: %s", resp.Status, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v", url, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestDaemonSetCommandLine runs the agent with the DaemonSet's arguments
// and checks its probes and scrape endpoint answer on the paths the
// manifests name.
func TestDaemonSetCommandLine(t *testing.T) {
	testenv.RequireBPFFS(t)
	m := loadManifests(t)
	c := m.daemonSet.Spec.Template.Spec.Containers[0]
	checkFlags(t, "daemonset args", c.Args, agentFlags(t))
	addr := startAgent(t, c.Args)
	client := &http.Client{Timeout: 5 * time.Second}
	for _, p := range []string{c.LivenessProbe.HTTPGet.Path, c.ReadinessProbe.HTTPGet.Path} {
		get(t, client, "http://"+addr+p, "", "", http.StatusOK)
	}
	path := flagValue(c.Args, "--web.telemetry-path")
	if body := get(t, client, "http://"+addr+path, "", "", http.StatusOK); !strings.Contains(body, "nsflow_build_info{") {
		t.Errorf("%s serves no nsflow_build_info", path)
	}
}

// TestSystemdCommandLine runs the agent with the unit's ExecStart and the
// example web config (its key pair swapped for a throwaway one): metrics
// are served over TLS to the documented user only.
func TestSystemdCommandLine(t *testing.T) {
	testenv.RequireBPFFS(t)
	args := strings.Fields(loadUnit(t).get("Service.ExecStart"))[1:]
	checkFlags(t, "ExecStart", args, agentFlags(t))

	cfgFile, pool := exampleWebConfig(t)
	for i, a := range args {
		if strings.HasPrefix(a, "--web.config.file") {
			args[i] = "--web.config.file=" + cfgFile
		}
	}
	addr := startAgent(t, args)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	body := get(t, client, "https://"+addr+"/metrics", "prometheus", "change-me", http.StatusOK)
	if !strings.Contains(body, "nsflow_build_info{") {
		t.Error("/metrics serves no nsflow_build_info")
	}
	get(t, client, "https://"+addr+"/metrics", "prometheus", "wrong", http.StatusUnauthorized)
}
