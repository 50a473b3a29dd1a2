package agent

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
)

// The tests of ports retired while their last counts could not be read
// (lingering, unread: see retryUnreadLocked).

// portRig is an agent watching the eth* interfaces of pairTopology under
// a fresh prefix, with eth-d of namespace a attached, its counters at k.
// Reads of those counters fail while failing is on, in every agent the
// rig starts; holdNextAttach holds an attach up.
type portRig struct {
	t         *testing.T
	r         *running
	cfg       Config
	prefix, a string
	k         bpf.PortKey
	failing   atomic.Bool
	hold      atomic.Pointer[attachHold]
	send      func(n uint64) // n UDP packets from a's eth-d (however named) to b
}

// attachHold holds an attach up before its programs go on, or after.
type attachHold struct {
	after            bool
	started, release chan struct{}
}

func newPortRig(t *testing.T, tag string, cfg Config) *portRig {
	t.Helper()
	testenv.RequireRoot(t)
	g := &portRig{t: t, prefix: testenv.Name(tag), cfg: cfg}
	s := topotest.Up(t, parseSpec(t, pairTopology), g.prefix)
	g.cfg.PinPath, g.cfg.StateFile = pins(t)
	if g.cfg.GoneRetention == 0 {
		g.cfg.GoneRetention = time.Minute
	}
	if g.cfg.FlowIdleTimeout == 0 {
		g.cfg.FlowIdleTimeout = 2 * time.Second // a pass a second
	}
	g.cfg.Interface = Filter{Include: regexp.MustCompile(`^eth`)}
	g.a = g.prefix + "a"
	dst := netip.MustParseAddrPort("198.18.40.2:5410")
	g.send = func(n uint64) { sendUDP(t, s, g.a, g.prefix+"b", dst, n, 64) }

	origRead, origAttach := readPortOf, attachIndex
	t.Cleanup(func() { readPortOf, attachIndex = origRead, origAttach }) // after the agent stops
	readPortOf = func(dp *bpf.Datapath) func(bpf.PortKey) (bpf.PortStats, bool, error) {
		return func(k bpf.PortKey) (bpf.PortStats, bool, error) {
			// k is set before failing is first turned on.
			if g.failing.Load() && k == g.k {
				return bpf.PortStats{}, false, errors.New("injected failure")
			}
			return dp.Port(k)
		}
	}
	attachIndex = func(dp *bpf.Datapath, path string, idx int) (*bpf.Attachment, error) {
		h := g.hold.Load()
		wait := func() {
			select {
			case h.started <- struct{}{}:
			default:
			}
			<-h.release
		}
		if h != nil && !h.after {
			wait()
		}
		att, err := origAttach(dp, path, idx)
		if h != nil && h.after {
			wait()
		}
		return att, err
	}
	g.start()
	waitAttached(t, g.r.a, g.a, "eth-d")
	g.k = g.r.a.attachment(g.a, "eth-d").Key()
	return g
}

// start starts an agent on the rig (again, after r.stop).
func (g *portRig) start() {
	g.t.Helper()
	g.r = startAgent(g.t, g.prefix, g.cfg)
	waitReady(g.t, g.r)
}

// holdNextAttach holds the attaches that start from now up, before their
// programs go on or after, until release; started has a value once one
// is held.
func (g *portRig) holdNextAttach(after bool) (started <-chan struct{}, release func()) {
	h := &attachHold{after: after, started: make(chan struct{}, 1), release: make(chan struct{})}
	g.hold.Store(h)
	return h.started, func() {
		g.hold.Store(nil)
		close(h.release)
	}
}

// waitHeld waits for a held attach.
func (g *portRig) waitHeld(started <-chan struct{}) {
	g.t.Helper()
	select {
	case <-started:
	case <-time.After(15 * time.Second):
		g.t.Fatal("no attach started")
	}
}

func (g *portRig) rename(from, to string) {
	g.t.Helper()
	if err := ipCmd("-n", g.a, "link", "set", from, "name", to); err != nil {
		g.t.Fatal(err)
	}
}

// check checks the IPv4 packets the interfaces of namespace a sent, by
// their series (0: none).
func (g *portRig) check(when string, want map[string]uint64) {
	g.t.Helper()
	for ifname, n := range want {
		if v, ok := sentIPv4(g.t, g.r, g.a, ifname); v != n || ok != (n != 0) {
			g.t.Errorf("%s: %s's series %d (there: %v), want %d", when, ifname, v, ok, n)
		}
	}
}

// counters is the UDP packets k's counters hold, and whether they exist.
func (g *portRig) counters() (uint64, bool) {
	g.t.Helper()
	st, ok, err := g.r.a.dp.Port(g.k)
	if err != nil {
		g.t.Fatal(err)
	}
	return st.Get(bpf.Egress, bpf.IPv4, bpf.UDP).Packets, ok
}

func (g *portRig) waitDeleted() {
	g.t.Helper()
	waitUntil(g.t, 15*time.Second, func() bool { _, ok := g.counters(); return !ok }, "the retired port's counters were not deleted")
}

// retireUnread renames from out of the filter (to) with reads failing,
// and waits for its counters to be left unread.
func (g *portRig) retireUnread(from, to string) {
	g.t.Helper()
	g.failing.Store(true)
	g.rename(from, to)
	waitUntil(g.t, 15*time.Second, func() bool { return g.r.a.unread(g.k) }, from+"'s counters were not left unread")
}

// waitRead waits for the unread entry at k to be settled.
func (g *portRig) waitRead() {
	g.t.Helper()
	waitUntil(g.t, 15*time.Second, func() bool { return !g.r.a.unread(g.k) }, "no read settled the unread counters")
}

// unread reports whether the counters at k wait for a read as a retired
// port's.
func (a *Agent) unread(k bpf.PortKey) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.lingering[k].unread
}

// TestUnreadPortCountsKept: eth-d sends 20 packets and is renamed out of
// the interface filter while reading its counters fails. Its counts must
// not be lost with its counters: its series stays at 20 through passes
// that cannot read them, and once a read works they are kept under eth-d
// and the counters deleted. Watched again, it sends 5 more and is renamed
// out again, unread; the agent is stopped and started, and its first pass
// cannot read them either: eth-d shows the 25 until a pass reads them,
// and keeps them then.
func TestUnreadPortCountsKept(t *testing.T) {
	g := newPortRig(t, "au", Config{})
	g.send(20)
	g.retireUnread("eth-d", "zz-d")
	g.check("renamed out, unread", map[string]uint64{"eth-d": 20, "zz-d": 0})
	time.Sleep(3 * g.r.a.evictInterval()) // passes that cannot read them
	if n, ok := g.counters(); !ok || n < 20 {
		t.Fatalf("after passes that could not read them: the counters hold %d UDP packets (there: %v), want 20 or more", n, ok)
	}
	g.check("after passes that could not read it", map[string]uint64{"eth-d": 20, "zz-d": 0})
	g.failing.Store(false)
	g.waitDeleted()
	g.check("read at last", map[string]uint64{"eth-d": 20, "zz-d": 0})

	g.rename("zz-d", "eth-d")
	waitAttached(t, g.r.a, g.a, "eth-d")
	g.send(5)
	g.check("watched again, 5 more", map[string]uint64{"eth-d": 25})
	g.retireUnread("eth-d", "zz-d")
	g.check("renamed out again, unread", map[string]uint64{"eth-d": 25, "zz-d": 0})
	g.r.stop()
	g.start() // reads still fail
	g.check("restarted, unread", map[string]uint64{"eth-d": 25, "zz-d": 0})
	if n, ok := g.counters(); !ok || n < 5 {
		t.Errorf("restarted, unread: the counters hold %d UDP packets (there: %v), want 5 or more", n, ok)
	}
	g.failing.Store(false)
	g.waitDeleted()
	g.check("restarted, read", map[string]uint64{"eth-d": 25, "zz-d": 0})
}

// TestUnreadPortSettledByAttach: eth-d sends 20 packets and is renamed out
// of the filter while reading its counters fails; renamed eth-e, it is
// watched again before an eviction pass retries the read (passes are 10
// seconds apart here). The attach reads the counters: the 20 are kept
// under eth-d, and eth-e's series starts from zero.
func TestUnreadPortSettledByAttach(t *testing.T) {
	g := newPortRig(t, "as", Config{FlowIdleTimeout: 20 * time.Second})
	g.send(20)
	g.retireUnread("eth-d", "zz-d")
	g.failing.Store(false)
	g.rename("zz-d", "eth-e")
	waitAttached(t, g.r.a, g.a, "eth-e")
	g.check("attached", map[string]uint64{"eth-d": 20, "eth-e": 0})
	g.send(5)
	g.check("eth-e sent 5", map[string]uint64{"eth-d": 20, "eth-e": 5})
}

// TestUnreadPortWhileReattached: eth-d sends 20 packets and is renamed out
// of the filter while reading its counters fails; renamed eth-e, it is
// watched again. While its attach is held up, eviction passes that can
// read must leave the counts to the attach, and scrapes show them under
// eth-d, not eth-e. The attach cannot read them either: the counters,
// counting on, stay under eth-d (5 more: 25) until a pass reads them;
// then eth-d keeps the 25 and eth-e's series starts from zero.
func TestUnreadPortWhileReattached(t *testing.T) {
	g := newPortRig(t, "aw", Config{})
	g.send(20)
	g.retireUnread("eth-d", "zz-d")
	started, release := g.holdNextAttach(false)
	g.rename("zz-d", "eth-e")
	g.waitHeld(started)
	g.failing.Store(false)                // a pass before the attach began would read them itself
	time.Sleep(3 * g.r.a.evictInterval()) // passes that can read, the attach held up
	g.check("attach held up", map[string]uint64{"eth-d": 20, "eth-e": 0})
	g.failing.Store(true)
	release()
	waitAttached(t, g.r.a, g.a, "eth-e")
	g.check("attached, unread", map[string]uint64{"eth-d": 20, "eth-e": 0})
	g.send(5)
	g.check("attached, unread, 5 more", map[string]uint64{"eth-d": 25, "eth-e": 0})
	g.failing.Store(false)
	g.waitRead()
	g.check("read by a pass", map[string]uint64{"eth-d": 25, "eth-e": 0})
	g.send(3)
	g.check("eth-e sent 3", map[string]uint64{"eth-d": 25, "eth-e": 3})
}

// TestUnreadPortKeepsRetention: eth-d's series holds 20 kept packets
// (it was renamed out and back) and 5 live ones when it is renamed out
// again while reading its counters fails. The kept 20 must not retire
// while the unread port's series shows them: the series stays at 25
// beyond the retention, and once read it holds the 25 as kept counts.
func TestUnreadPortKeepsRetention(t *testing.T) {
	g := newPortRig(t, "ar", Config{GoneRetention: 2 * time.Second})
	g.send(20)
	g.rename("eth-d", "zz-d")
	waitUntil(t, 15*time.Second, func() bool {
		return g.r.a.attachment(g.a, "zz-d") == nil && g.r.a.attachment(g.a, "eth-d") == nil
	}, "zz-d was not detached")
	g.rename("zz-d", "eth-d")
	waitAttached(t, g.r.a, g.a, "eth-d")
	g.send(5)
	g.check("kept 20, 5 live", map[string]uint64{"eth-d": 25})

	g.retireUnread("eth-d", "zz-d")
	time.Sleep(2*time.Second + 3*g.r.a.evictInterval()) // past the retention, passes between
	g.check("unread past the retention", map[string]uint64{"eth-d": 25})
	g.failing.Store(false)
	g.waitRead()
	g.r.a.mu.RLock()
	var kept uint64
	if k := g.r.a.gonePorts[portLabel{g.a, "eth-d"}]; k != nil {
		kept = k.stats.Family(bpf.Egress, bpf.IPv4).Packets
	}
	g.r.a.mu.RUnlock()
	if kept != 25 {
		t.Errorf("read at last: eth-d keeps %d IPv4 packets sent, want 25", kept)
	}
}

// TestUnreadDiscardedPortKept: renamed out of the filter and back as
// eth-e, a port's attach is held up once its programs are on; meanwhile
// it sends 7 packets and is renamed out again (zz-e), so the agent
// discards the attachment when it completes, and reading the counters
// fails then. The 7 must stay under eth-e, the name the attach was for,
// until a pass reads them, and be kept then.
func TestUnreadDiscardedPortKept(t *testing.T) {
	g := newPortRig(t, "ad", Config{})
	g.rename("eth-d", "zz-d")
	g.waitDeleted()
	started, release := g.holdNextAttach(true)
	g.rename("zz-d", "eth-e")
	g.waitHeld(started)
	waitOperUp(t, g.a, "eth-e", g.prefix+"b", "eth-d")
	g.send(7)
	g.rename("eth-e", "zz-e")
	g.failing.Store(true)
	release()
	waitUntil(t, 15*time.Second, func() bool { return g.r.a.unread(g.k) }, "the discarded attachment's counters were not left unread")
	g.check("discarded, unread", map[string]uint64{"eth-e": 7, "zz-e": 0})
	g.failing.Store(false)
	g.waitRead()
	g.waitDeleted()
	g.check("read at last", map[string]uint64{"eth-e": 7, "zz-e": 0})
}

// unreadUnderLive brings the rig to this: eth-d sent 20 packets and was
// renamed out of the filter while reading its counters failed, then came
// back as eth-e, whose attach could not read them either, and sent 5
// more. The counters hold 25, all shown under eth-d; reads still fail.
func (g *portRig) unreadUnderLive() {
	g.t.Helper()
	g.send(20)
	g.retireUnread("eth-d", "zz-d")
	g.rename("zz-d", "eth-e")
	waitAttached(g.t, g.r.a, g.a, "eth-e")
	g.send(5)
	g.check("set up", map[string]uint64{"eth-d": 25, "eth-e": 0})
}

// TestUnreadPortRetiredAgain: from unreadUnderLive, the reads work again
// and eth-e is renamed out of the filter, likely before a pass reads the
// counters. Either way the 25 shown under eth-d are kept there, not
// under eth-e.
func TestUnreadPortRetiredAgain(t *testing.T) {
	g := newPortRig(t, "al", Config{})
	g.unreadUnderLive()
	g.failing.Store(false)
	g.rename("eth-e", "zz-e")
	g.waitDeleted()
	g.check("retired", map[string]uint64{"eth-d": 25, "eth-e": 0, "zz-e": 0})
}

// TestUnreadPortAcrossRestart: from unreadUnderLive, the agent is stopped
// and started (reads work): the 25 are kept under eth-d, and eth-e's
// series starts from zero.
func TestUnreadPortAcrossRestart(t *testing.T) {
	g := newPortRig(t, "ak", Config{})
	g.unreadUnderLive()
	g.r.stop()
	g.failing.Store(false)
	g.start()
	waitAttached(t, g.r.a, g.a, "eth-e")
	g.check("restarted", map[string]uint64{"eth-d": 25, "eth-e": 0})
	g.send(3)
	g.check("eth-e sent 3", map[string]uint64{"eth-d": 25, "eth-e": 3})
}

// TestUnreadPortSurvivesFailedDetach: from unreadUnderLive (tc
// attachments, so that a detach can be made to fail), eth-e is deleted
// and its detach fails. The counters stay under eth-d, the unread port's
// labels, through the failed detach and the retry that works, whose
// retire keeps them there once reads work again.
func TestUnreadPortSurvivesFailedDetach(t *testing.T) {
	g := newPortRig(t, "af", Config{AttachMode: bpf.ModeTC})
	g.unreadUnderLive()
	bpf.FailNextTCDetach(errors.New("injected netlink failure"))
	if err := ipCmd("-n", g.a, "link", "del", "eth-e"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, func() bool { return g.r.a.attachment(g.a, "eth-e") == nil }, "eth-e still known after its deletion")
	g.check("deleted, its detach failed", map[string]uint64{"eth-d": 25, "eth-e": 0})
	g.failing.Store(false)
	waitUntil(t, 15*time.Second, func() bool {
		g.r.a.mu.RLock()
		defer g.r.a.mu.RUnlock()
		_, lingers := g.r.a.lingering[g.k]
		return !lingers
	}, "the deleted eth-e was not retired")
	g.check("retired", map[string]uint64{"eth-d": 25, "eth-e": 0})
}

// TestUnreadPortAfterFailedSave: eth-d sends 10 packets and is renamed
// out of the filter while saves fail, so its counters wait for a save
// (awaitSave) with the 10 kept; renamed back, it sends 5 more, and is
// renamed out again while reads fail. When saves work again, the counters
// that waited for one must not be deleted: they hold the unread 5, which
// stay under eth-d and are kept there once read.
func TestUnreadPortAfterFailedSave(t *testing.T) {
	g := newPortRig(t, "av", Config{})
	g.send(10)

	// A file where the state file's directory was makes every save fail.
	dir := filepath.Dir(g.cfg.StateFile)
	broken := false
	mend := func() {
		if broken {
			broken = false
			if err := errors.Join(os.Remove(dir), os.Rename(dir+".away", dir)); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(mend)
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	broken = true
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waits := func() bool {
		g.r.a.mu.RLock()
		defer g.r.a.mu.RUnlock()
		_, ok := g.r.a.awaitSave[g.k]
		return ok
	}
	g.rename("eth-d", "zz-d")
	waitUntil(t, 15*time.Second, waits, "eth-d's counters did not wait for a save")
	g.rename("zz-d", "eth-d")
	waitAttached(t, g.r.a, g.a, "eth-d")
	g.send(5)
	g.check("back, 5 more", map[string]uint64{"eth-d": 15})

	g.retireUnread("eth-d", "zz-d")
	mend()
	waitUntil(t, 15*time.Second, func() bool { return !waits() }, "no save drained the counters that waited for one")
	g.check("saved, unread", map[string]uint64{"eth-d": 15, "zz-d": 0})
	g.failing.Store(false)
	g.waitRead()
	g.waitDeleted()
	g.check("read at last", map[string]uint64{"eth-d": 15, "zz-d": 0})
}
