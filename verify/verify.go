package verify

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/topology"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultTimeout is how long a probe waits for its answer.
const DefaultTimeout = 2 * time.Second

// MinTimeout is the shortest probe timeout: below it a probe's own
// scheduling (a goroutine woken late on a busy host) reads as a lost
// packet, and a lost packet as isolation.
const MinTimeout = 100 * time.Millisecond

// Options tune Run.
type Options struct {
	// Paths maps namespace names to netns paths; a namespace missing here
	// uses Spec.NetnsPath (/run/netns/NAME).
	Paths map[string]string
	// Timeout bounds each probe (DefaultTimeout when 0; at least
	// MinTimeout).
	Timeout time.Duration
	// NoEvidence skips the eBPF datapath (for hosts without BPF).
	NoEvidence bool
	// Load saturates the allowed paths with bulk traffic while the checks
	// run and reports the throughput achieved.
	Load bool
	// LoadDuration is the minimum time the load runs (default 2s).
	LoadDuration time.Duration
}

// beforePortSpace, when set (by tests), runs between the probes and the
// port-space check.
var beforePortSpace func()

// ErrInterrupted is returned, wrapped with the context's cause, when the
// context of Run ends before the run does: what ran proves nothing, so
// there is no report.
var ErrInterrupted = errors.New("interrupted before every check ran: nothing verified")

func interrupted(ctx context.Context) error {
	return fmt.Errorf("%w (%w)", ErrInterrupted, context.Cause(ctx))
}

// EnvError is an environment problem that keeps verify from running: a
// namespace that does not exist, no permission, no BPF (exit status 2).
type EnvError struct{ Err error }

func (e *EnvError) Error() string { return "environment: " + e.Err.Error() }
func (e *EnvError) Unwrap() error { return e.Err }

// env is what one run knows about the live namespaces.
type env struct {
	model   *Model
	paths   map[string]string
	timeout time.Duration
	cookies map[string]uint64
	names   map[uint64]string // cookie -> first namespace with it
	// observed are the addresses each namespace really holds (heldAddr).
	observed map[string][]netip.Addr
	// noLoopback6 marks namespaces without ::1 (IPv6 off on lo).
	noLoopback6 map[string]bool
	// reordered are the interfaces, by namespace, whose addresses the
	// kernel holds in another order than the file's; liveIntent is what
	// CheckIntent says with the kernel's order.
	reordered  map[string][]string
	liveIntent error
}

// Run verifies a topology that is up: it checks intent against the
// wiring, starts responders, probes the full matrix (once more for the
// probes expected to reach that did not, and those that could not run),
// checks port-space and stack isolation and reads the eBPF evidence. A
// *SpecError or *EnvError means nothing was verified, and so does
// ErrInterrupted: ctx ended before the run did. An interrupted run returns
// at once; probes still in flight end within the timeout in the
// background, after the run's lock is released.
func Run(ctx context.Context, s *topology.Spec, opts Options) (*Report, error) {
	start := time.Now()
	if len(s.Namespaces) == 0 {
		return nil, &SpecError{fmt.Errorf("topology %s declares no namespaces: nothing to verify", s.Name)}
	}
	m := NewModel(s)
	if err := m.CheckIntent(); err != nil {
		return nil, err
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Timeout < MinTimeout {
		return nil, fmt.Errorf("probe timeout %v is below %v", opts.Timeout, MinTimeout)
	}
	unlock, err := topology.LockRun(s.Name)
	if err != nil {
		return nil, &EnvError{err}
	}
	defer unlock()
	e, err := openEnv(m, s, opts.Paths)
	if err != nil {
		return nil, err
	}
	e.timeout = opts.Timeout
	ports := m.Ports()
	rep := &Report{Topology: s.Name, Namespaces: m.Namespaces, Timeout: opts.Timeout}
	rep.phase("namespaces", start)
	t := time.Now()
	for _, p := range ports {
		rep.Ports = append(rep.Ports, p.String())
	}

	resp := map[string]*Responder{}
	defer func() {
		for _, r := range resp {
			r.Close()
		}
	}()
	for _, ns := range m.Namespaces {
		r, err := StartResponder(e.paths[ns], ns, ports)
		if err != nil {
			return nil, &EnvError{err}
		}
		resp[ns] = r
	}
	rep.phase("responders", t)
	t = time.Now()

	var ev *evidence
	if !opts.NoEvidence {
		if ev, err = startEvidence(e); err != nil {
			return nil, &EnvError{err}
		}
		defer ev.close()
	}
	var ld *load
	if opts.Load {
		if ld, err = startLoad(ctx, e, opts.LoadDuration); err != nil {
			return nil, &EnvError{err}
		}
		defer ld.stop()
	}

	rep.phase("attach", t)
	if ctx.Err() != nil {
		return nil, interrupted(ctx)
	}

	t = time.Now()
	probes := e.probes(ports)
	pr := newProber(e.paths, e.names, opts.Timeout)
	if !finished(ctx, func() { pr.runChecked(probes) }) {
		return nil, interrupted(ctx)
	}
	rep.phase("probes", t)
	t = time.Now()
	if !finished(ctx, func() { rep.Probes, rep.Retried = retry(pr.runChecked, probes) }) {
		return nil, interrupted(ctx)
	}
	unjudgeable(rep.Probes, resp)
	e.noSource(rep.Probes)
	pr.mu.Lock()
	if pr.unwatched != "" {
		rep.Notes = append(rep.Notes, pr.unwatched)
	}
	pr.mu.Unlock()
	rep.phase("retry", t)
	if ctx.Err() != nil {
		return nil, interrupted(ctx)
	}
	t = time.Now()
	if beforePortSpace != nil {
		beforePortSpace()
	}
	rep.PortSpace = e.portSpace(ports, resp)
	rep.phase("port_space", t)
	t = time.Now()
	rep.Stack = e.stack()
	forgeable(rep.Probes, rep.Stack)
	impostors(rep.Probes, resp) // after forgeable, whose reason is the more precise
	rep.phase("stack", t)
	if ld != nil {
		rep.Load = ld.stop()
	}
	// The load's flows end with ctx: a load cut short is no load, and the
	// checks after the probes may have run after it, too.
	if ctx.Err() != nil {
		return nil, interrupted(ctx)
	}
	if ev != nil {
		t = time.Now()
		if rep.Evidence, err = ev.collect(); err != nil {
			return nil, &EnvError{err}
		}
		rep.phase("evidence", t)
	}
	rep.Elapsed = time.Since(start)
	return rep, nil
}

// retry probes once more what may have failed by chance, as the
// Kubernetes network-policy tests do, so that one lost packet does not
// fail a run: a probe expected to reach that did not, and a probe that
// could not run. The second result is the one reported. A reply where
// none may come, or from the wrong namespace, is never probed again: a
// packet that arrived proves the breach, and a second try that happens
// to be blocked must not hide it.
func retry(run func([]*Probe), probes []*Probe) ([]*Probe, int) {
	var again []*Probe
	var at []int
	for i, p := range probes {
		if retriable(p) {
			again = append(again, &Probe{From: p.From, To: p.To, Addr: p.Addr, Port: p.Port, Expect: p.Expect, OneWay: p.OneWay, port: p.port, Try: 2})
			at = append(at, i)
		}
	}
	if len(again) == 0 {
		return probes, 0
	}
	run(again)
	out := slices.Clone(probes)
	for k, i := range at {
		out[i] = again[k]
	}
	return out, len(again)
}

// unjudgeable turns the timeouts of UDP probes to a port another process
// holds in the target into probes that could not run: no responder of
// verify's answers there, so a timeout cannot tell a blocked packet from
// one delivered to a listener that keeps quiet.
func unjudgeable(probes []*Probe, resp map[string]*Responder) {
	for _, p := range probes {
		if p.Outcome != Blocked {
			continue
		}
		if b, ok := resp[p.To].silent(p.port, p.Addr); ok {
			p.Outcome = Failed
			p.Detail = fmt.Sprintf("%s is held by another process in %s, which need not answer: a timeout proves nothing (probe other ports with isolation.ports)", b, p.To)
		}
	}
}

// impostors turns an anonymous answer to a probe expected to reach into
// one that could not be judged when verify's responder listens on that
// port in the namespace that should answer: only the responder answers
// there, with its identity, so a refusal or a listener that is not a
// responder was another stack answering in the target's name (a firewall
// on the way rejecting with the target's address, another holder of the
// address). It does not prove that the packet reached the target.
func impostors(probes []*Probe, resp map[string]*Responder) {
	for _, p := range probes {
		if p.Expect == "" || p.By != "" || !p.Outcome.Reachable() || !resp[p.Expect].listens(p.port, p.Addr) {
			continue
		}
		what := "refused"
		if p.Outcome == Replied {
			what = "answered without an identity"
			if p.Detail != "" {
				what = p.Detail // no identity, or a listener that is not a responder
			}
		}
		p.Outcome = Failed
		p.Detail = fmt.Sprintf("%s, though verify's responder listens on %s in %s: another stack answered in its name "+
			"(a firewall on the way, another holder of %s), which does not prove the packet reached %s", what, p.Port, p.Expect, p.Addr, p.Expect)
	}
}

// noSource reads a probe that could not be sent for want of a source
// address (EADDRNOTAVAIL) as blocked when its namespace holds no address
// of the target's family (IPv6 disabled there, say): no packet can leave
// it. With such an address, the error (ephemeral ports run out, say)
// stays one.
func (e *env) noSource(probes []*Probe) {
	for _, p := range probes {
		if p.Outcome != Failed || !strings.Contains(p.Detail, unix.EADDRNOTAVAIL.Error()) {
			continue
		}
		if !slices.ContainsFunc(e.observed[p.From], func(a netip.Addr) bool { return a.Is4() == p.Addr.Is4() }) {
			p.Outcome, p.Detail = Unreachable, fmt.Sprintf("%s has no address of the family to send from", p.From)
		}
	}
}

// finished runs fn and reports whether it returned before ctx ended. An
// interrupted run does not wait for its probes' timeouts: they end in the
// background, and their results are not read.
func finished(ctx context.Context, fn func()) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// forgeable turns a refused probe from a namespace with firewall rules
// into one that could not be judged: a REJECT rule there answers with the
// same TCP reset or port unreachable the target would, so the refusal no
// longer proves that the packet arrived. (The firewall check fails the
// run on those rules anyway.)
func forgeable(probes []*Probe, stack []Check) {
	firewalled := map[string]bool{}
	for _, c := range stack {
		if c.Kind == "firewall" && (len(c.Problems) > 0 || c.Error != "") {
			firewalled[c.Netns] = true
		}
	}
	for _, p := range probes {
		if p.Outcome == Refused && firewalled[p.From] {
			p.Outcome = Failed
			p.Detail = fmt.Sprintf("refused, but %s has firewall rules, which can send that refusal themselves: it does not prove the packet reached %s", p.From, p.To)
		}
	}
}

// retriable reports whether a probe's result may be a lost packet or a
// hiccup rather than a finding: expected to reach but not answered, or
// not run at all. Anything that was answered stands.
func retriable(p *Probe) bool {
	if p.Outcome == Failed {
		return true
	}
	if p.Expect != "" && p.Outcome == Replied && p.Detail == noIdentity {
		return true // a connection whose responder was slow to say who it is
	}
	return p.Expect != "" && !p.Outcome.Reachable()
}

func openEnv(m *Model, s *topology.Spec, paths map[string]string) (*env, error) {
	e := &env{model: m, paths: map[string]string{}, cookies: map[string]uint64{}, names: map[uint64]string{}, observed: map[string][]netip.Addr{}, noLoopback6: map[string]bool{}, reordered: map[string][]string{}}
	var errs []error
	for _, ns := range m.Namespaces {
		p, ok := paths[ns]
		if !ok {
			p = s.NetnsPath(ns)
		}
		e.paths[ns] = p
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, fmt.Errorf("namespace %s: %w (is the topology up?)", ns, err))
			continue
		}
		// Judge only this topology's namespaces: another topology (or
		// none) may use the name, and its wiring is not this file's.
		if owner, err := netnsOwner(p); err != nil {
			errs = append(errs, fmt.Errorf("namespace %s: %w", ns, err))
			continue
		} else if owner != s.Name {
			by := "was not made by nsflow topology up"
			if owner != "" {
				by = "belongs to topology " + owner
			}
			errs = append(errs, fmt.Errorf("namespace %s %s, not to %s (is %s up?)", ns, by, s.Name, s.Name))
			continue
		}
		c, err := bpf.NetnsCookie(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("namespace %s: %w", ns, err))
			continue
		}
		e.cookies[ns] = c
		if _, dup := e.names[c]; !dup {
			e.names[c] = ns
		}
		addrs, byIface, lo6, err := heldAddrs(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("namespace %s: %w", ns, err))
			continue
		}
		e.observed[ns] = addrs
		if changed := m.FollowLiveOrder(ns, byIface); len(changed) > 0 {
			e.reordered[ns] = changed
		}
		if !lo6 {
			e.noLoopback6[ns] = true
		}
	}
	if len(errs) > 0 {
		return nil, &EnvError{errors.Join(errs...)}
	}
	if len(e.reordered) > 0 {
		// The file's intent held with the file's order (CheckIntent);
		// the kernel's may break it, which no probe would then show.
		if err := m.CheckIntent(); err != nil {
			e.liveIntent = errors.Unwrap(err)
		}
	}
	return e, nil
}

// netnsOwner names the topology that made the namespace at path, from
// its loopback's alias.
func netnsOwner(path string) (string, error) {
	var owner string
	err := withHandle(path, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("loopback: %w", err)
		}
		owner = topology.OwnerOf(lo.Attrs().Alias)
		return nil
	})
	return owner, err
}

// targets are the addresses probed in ns: the declared ones, whether
// present or not, and any other address it holds (heldAddr), which nothing
// may reach since the topology does not know it. Link-local addresses,
// declared ones too, are left out: a probe of one needs the interface to
// send it from, and the model judges link-local reach from the segments
// (CheckIntent).
func (e *env) targets(ns string) (declared, extra []netip.Addr) {
	for _, a := range e.model.Addresses(ns) {
		if !isLinkLocal6(a) {
			declared = append(declared, a)
		}
	}
	for _, a := range e.observed[ns] {
		if !slices.Contains(declared, a) {
			extra = append(extra, a)
		}
	}
	return declared, extra
}

// probes builds the full matrix: every namespace to every address of every
// other namespace, on every port.
func (e *env) probes(ports []topology.Port) []*Probe {
	var out []*Probe
	for _, from := range e.model.Namespaces {
		for _, to := range e.model.Namespaces {
			if from == to {
				continue
			}
			declared, extra := e.targets(to)
			for _, a := range slices.Concat(declared, extra) {
				expect, oneWay := "", false
				if slices.Contains(declared, a) {
					expect = e.model.Answerer(from, a)
					got, _ := e.model.Deliver(from, a)
					oneWay = expect == "" && got == to
				}
				for _, p := range ports {
					out = append(out, &Probe{From: from, To: to, Addr: a, Port: p.String(), Expect: expect, OneWay: oneWay, port: p, Try: 1})
				}
			}
		}
	}
	return out
}
