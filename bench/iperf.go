package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/traffic"
)

// iperf3 measures the first pair of each path with iperf3, when it is
// installed, uninstrumented, as a sanity line for the built-in generator:
// Rounds times, each time right after the generator on the same pair for
// the same time, so both see the same conditions. iperf3 is started on a
// thread inside each namespace, so its process is born there. Failures
// are recorded in the report, not fatal.
func (r *runner) iperf3(ctx context.Context, e *env) {
	// Why there is no sanity line is said in the report, per path and
	// protocol, as a measurement's own failure would be.
	skip := func(why string) {
		for _, path := range r.cfg.Paths {
			for _, proto := range r.cfg.Protos {
				r.report.Iperf3 = append(r.report.Iperf3, Iperf3{Path: path, Proto: proto, Error: why})
			}
		}
	}
	bin, err := exec.LookPath("iperf3")
	if err != nil {
		skip("not measured: iperf3 is not installed (Debian package iperf3)")
		return
	}
	if err := r.in.detach(); err != nil {
		skip("not measured: " + err.Error())
		return
	}
	secs := iperf3Seconds(r.cfg.Duration)
	for _, path := range r.cfg.Paths {
		pairs := findPairs(e.spec, path)
		if len(pairs) == 0 {
			continue
		}
		p := pairs[0]
		for _, proto := range r.cfg.Protos {
			res := Iperf3{Path: path, Proto: proto}
			payload, err := r.cfg.payload(proto, p.serverAddr.Is6())
			p.size = payload
			if err != nil {
				res.Error = err.Error()
				r.report.Iperf3 = append(r.report.Iperf3, res)
				continue
			}
			var ig, im, gg []float64
			for round := 1; round <= r.cfg.Rounds && err == nil; round++ {
				r.progress(Progress{Phase: "iperf3", Case: fmt.Sprintf("%s/%s/1 round %d", path, proto, round)})
				var gen []traffic.Result
				gen, err = r.flows(ctx, proto, []pair{p}, time.Duration(secs)*time.Second)
				if err != nil {
					break
				}
				var g, m float64
				if g, m, err = r.runIperf3(ctx, bin, p, proto, payload, secs); err != nil {
					break
				}
				ig, im, gg = append(ig, g), append(im, m), append(gg, gen[0].Gbps())
			}
			if err != nil {
				res.Error = err.Error()
			}
			res.Rounds = len(ig)
			res.Gbps, res.Mpps, res.Generator = median(ig), median(im), median(gg)
			if res.Gbps > 0 {
				res.Ratio = res.Generator / res.Gbps
			}
			r.report.Iperf3 = append(r.report.Iperf3, res)
		}
	}
}

// iperf3Ports are where the one-off iperf3 server may listen: the first
// one free in the server's namespace (a -f topology's namespace may run
// an iperf3 of its own, which must not be measured in its place).
const iperf3FirstPort, iperf3LastPort = 5201, 5299

// iperf3MaxLen is the largest block iperf3 takes (-l).
const iperf3MaxLen = 1 << 20

func (r *runner) runIperf3(ctx context.Context, bin string, p pair, proto traffic.Proto, payload, secs int) (gbps, mpps float64, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+15*time.Second)
	defer cancel()
	busy, err := listeningPorts(p)
	if err != nil {
		return 0, 0, err
	}
	port := iperf3FirstPort
	for busy[port] {
		if port++; port > iperf3LastPort {
			return 0, 0, fmt.Errorf("no free port for an iperf3 server in %d..%d", iperf3FirstPort, iperf3LastPort)
		}
	}
	var stderr strings.Builder
	srv := exec.CommandContext(ctx, bin, "-s", "-1", "-B", p.serverAddr.String(), "-p", strconv.Itoa(port))
	srv.Stderr = &stderr
	if err := nsenter.Do(p.server.netns, srv.Start); err != nil {
		return 0, 0, fmt.Errorf("start iperf3 server: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	defer func() { _ = srv.Process.Kill(); <-exited }()
	if err := waitListening(ctx, p, port, exited); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			err = fmt.Errorf("%w; it said: %s", err, msg)
		}
		return 0, 0, err
	}
	args := []string{"-c", p.serverAddr.String(), "-p", strconv.Itoa(port), "-J",
		"-t", strconv.Itoa(secs), "-P", strconv.Itoa(r.cfg.Streams)}
	// The same write size as the generator's (--size, or its default), up
	// to the 1 MiB iperf3 accepts.
	args = append(args, "-l", strconv.Itoa(min(payload, iperf3MaxLen)))
	if proto == traffic.UDP {
		args = append(args, "-u", "-b", "0")
	}
	cli := exec.CommandContext(ctx, bin, args...)
	var out []byte
	if err := nsenter.Do(p.client.netns, func() error {
		var err error
		out, err = cli.Output()
		return err
	}); err != nil {
		return 0, 0, fmt.Errorf("iperf3 client: %w", err)
	}
	var j struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			Sum struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Packets       float64 `json:"packets"`
				LostPackets   float64 `json:"lost_packets"`
				Seconds       float64 `json:"seconds"`
			} `json:"sum"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &j); err != nil {
		return 0, 0, fmt.Errorf("iperf3 output: %w", err)
	}
	if j.Error != "" {
		return 0, 0, fmt.Errorf("iperf3: %s", j.Error)
	}
	if proto == traffic.UDP {
		s := j.End.Sum
		if s.Seconds > 0 {
			mpps = (s.Packets - s.LostPackets) / s.Seconds / 1e6
		}
		return s.BitsPerSecond * (1 - s.LostPackets/max(s.Packets, 1)) / 1e9, mpps, nil
	}
	return j.End.SumReceived.BitsPerSecond / 1e9, 0, nil
}

// waitListening polls the server namespace's socket table until our
// iperf3 listens on port, or has exited. A probe connection would not do:
// iperf3 takes any connection as its control channel and fails the real
// test when the probe closes.
func waitListening(ctx context.Context, p pair, port int, exited <-chan error) error {
	for {
		ports, err := listeningPorts(p)
		if err != nil {
			return err
		}
		if ports[port] {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("iperf3 server did not start: %w", ctx.Err())
		case err := <-exited:
			return fmt.Errorf("iperf3 server exited before it listened (%v)", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// listeningPorts are the TCP ports listened on in the server's namespace.
func listeningPorts(p pair) (map[int]bool, error) {
	ports := map[int]bool{}
	err := nsenter.Do(p.server.netns, func() error {
		for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
			b, err := os.ReadFile(f)
			if err != nil && !os.IsNotExist(err) {
				return err
			}
			for _, line := range strings.Split(string(b), "\n") {
				// sl local_address rem_address st ...; st 0A is LISTEN.
				fields := strings.Fields(line)
				if len(fields) <= 3 || fields[3] != "0A" {
					continue
				}
				_, hexPort, ok := strings.Cut(fields[1], ":")
				if n, err := strconv.ParseUint(hexPort, 16, 16); ok && err == nil {
					ports[int(n)] = true
				}
			}
		}
		return nil
	})
	return ports, err
}

// iperf3Seconds is the run's duration in whole seconds, at least one:
// iperf3 reads -t as an integer, and 0 means forever.
func iperf3Seconds(d time.Duration) int {
	return max(1, int(math.Round(d.Seconds())))
}
