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

// iperf3Port is the fixed port of the one-off iperf3 server; the server
// namespace is the run's own, so nothing else listens there.
const iperf3Port = 5201

func (r *runner) runIperf3(ctx context.Context, bin string, p pair, proto traffic.Proto, payload, secs int) (gbps, mpps float64, err error) {
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+15*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, bin, "-s", "-B", p.serverAddr.String(), "-p", strconv.Itoa(iperf3Port))
	if err := nsenter.Do(p.server.netns, srv.Start); err != nil {
		return 0, 0, fmt.Errorf("start iperf3 server: %w", err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	if err := waitListening(p, ctx); err != nil {
		return 0, 0, err
	}
	args := []string{"-c", p.serverAddr.String(), "-p", strconv.Itoa(iperf3Port), "-J",
		"-t", strconv.Itoa(secs), "-P", strconv.Itoa(r.cfg.Streams)}
	if proto == traffic.UDP {
		args = append(args, "-u", "-b", "0", "-l", strconv.Itoa(payload))
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

// waitListening polls the server namespace's socket table until iperf3
// listens. A probe connection would not do: iperf3 takes any connection
// as its control channel and fails the real test when the probe closes.
func waitListening(p pair, ctx context.Context) error {
	want := fmt.Sprintf(":%04X ", iperf3Port)
	for {
		var listening bool
		err := nsenter.Do(p.server.netns, func() error {
			for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
				b, err := os.ReadFile(f)
				if err != nil && !os.IsNotExist(err) {
					return err
				}
				for _, line := range strings.Split(string(b), "\n") {
					// sl local_address rem_address st ...; st 0A is LISTEN.
					fields := strings.Fields(line)
					if len(fields) > 3 && strings.Contains(fields[1]+" ", want) && fields[3] == "0A" {
						listening = true
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if listening {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("iperf3 server did not start: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// iperf3Seconds is the run's duration in whole seconds, at least one:
// iperf3 reads -t as an integer, and 0 means forever.
func iperf3Seconds(d time.Duration) int {
	return max(1, int(math.Round(d.Seconds())))
}
