package verify

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/nsflow/nsflow/traffic"
)

// maxLoadFlows bounds the bulk flows of --load: more than a few streams
// per core only adds scheduling noise.
const maxLoadFlows = 8

// LoadFlow is one bulk TCP flow run during the checks.
type LoadFlow struct {
	From  string     `json:"from"`
	To    string     `json:"to"`
	Addr  netip.Addr `json:"addr"`
	Bytes uint64     `json:"bytes"`
	// Gbps is Bytes over Elapsed, the time the flow really moved data.
	Gbps    float64       `json:"gbps"`
	Elapsed time.Duration `json:"elapsed_ns"`
	// Error is set when the flow failed, or ended before the checks did:
	// then the checks did not all run under load.
	Error string `json:"error,omitempty"`
}

// LoadReport is the throughput achieved while isolation was verified.
type LoadReport struct {
	Flows     []LoadFlow `json:"flows"`
	TotalGbps float64    `json:"total_gbps"`
	// Elapsed is how long the load really ran: the longest of its flows.
	Elapsed time.Duration `json:"elapsed_ns"`
}

type load struct {
	ctx   context.Context
	min   time.Duration
	start time.Time
	flows []LoadFlow
	runs  []*traffic.Run
	// ended[i] is closed when flow i's run ends, on its own (an error, or
	// ctx) or by stop; firstEnd when the first of them does.
	ended     []chan struct{}
	firstEnd  chan struct{}
	firstOnce sync.Once
	report    *LoadReport
}

// startLoad saturates allowed paths with bulk TCP: for each namespace in
// turn, one flow to a namespace it is expected to reach, preferring
// namespaces not yet loaded, so the load spreads over the topology. The
// flows end with ctx.
func startLoad(ctx context.Context, e *env, minDur time.Duration) (*load, error) {
	if minDur <= 0 {
		minDur = 2 * time.Second
	}
	l := &load{ctx: ctx, min: minDur, start: time.Now(), firstEnd: make(chan struct{})}
	busy := map[string]bool{}
	for _, from := range e.model.Namespaces {
		if len(l.flows) == maxLoadFlows || busy[from] {
			continue
		}
		for _, to := range e.model.Namespaces {
			if to == from || busy[to] {
				continue
			}
			addr, ok := e.reachableAddr(from, to)
			if !ok {
				continue
			}
			run, err := traffic.Start(ctx, traffic.Flow{
				Proto:       traffic.TCP,
				ClientNetns: e.paths[from],
				ServerNetns: e.paths[to],
				Server:      netip.AddrPortFrom(addr, 0),
			})
			if err != nil {
				l.min = 0 // no figures wanted: stop at once
				l.stop()
				return nil, fmt.Errorf("load %s -> %s: %w", from, to, err)
			}
			busy[from], busy[to] = true, true
			l.flows = append(l.flows, LoadFlow{From: from, To: to, Addr: addr})
			l.runs = append(l.runs, run)
			ended := make(chan struct{})
			l.ended = append(l.ended, ended)
			go func() {
				run.Wait()
				close(ended)
				l.firstOnce.Do(func() { close(l.firstEnd) })
			}()
			break
		}
	}
	if len(l.runs) == 0 {
		return nil, fmt.Errorf("load: the topology has no allowed path to load")
	}
	return l, nil
}

func (e *env) reachableAddr(from, to string) (netip.Addr, bool) {
	for _, a := range e.model.Addresses(to) {
		if e.model.Answerer(from, a) == to {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// stop ends the load, once its minimum duration has passed (at once if
// ctx ended or a flow already did: the figures are lost anyway), and
// reports what each flow moved over the time it really ran. A flow that
// ended before stop did is reported with an error.
func (l *load) stop() *LoadReport {
	if l.report != nil {
		return l.report
	}
	if d := l.min - time.Since(l.start); d > 0 && len(l.runs) > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-l.ctx.Done():
		case <-l.firstEnd:
		}
		t.Stop()
	}
	early := make([]bool, len(l.runs))
	for i := range l.runs {
		select {
		case <-l.ended[i]:
			early[i] = true
		default:
		}
	}
	r := &LoadReport{}
	for i, run := range l.runs {
		res, err := run.Stop()
		f := l.flows[i]
		f.Bytes, f.Gbps, f.Elapsed = res.Received.Bytes, res.Gbps(), res.Elapsed
		switch {
		case err != nil:
			f.Error = err.Error()
		case early[i]:
			f.Error = fmt.Sprintf("ended after %.1fs, before the checks did", res.Elapsed.Seconds())
		}
		r.TotalGbps += f.Gbps
		r.Elapsed = max(r.Elapsed, f.Elapsed)
		r.Flows = append(r.Flows, f)
	}
	l.report = r
	return r
}
