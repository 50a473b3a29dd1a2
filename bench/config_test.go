package bench

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/traffic"
)

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"pairs", Config{Pairs: 1000}, "pairs: 1000"},
		{"streams", Config{Streams: -1}, "streams: -1"},
		{"duration", Config{Duration: time.Millisecond}, "duration: 1ms"},
		{"small frame", Config{Protos: []traffic.Proto{traffic.UDP}, Size: 40}, "size: frame size 40 is too small"},
		{"jumbo frame", Config{Protos: []traffic.Proto{traffic.UDP}, Size: 9000}, "size: UDP frame 9000"},
		{"proto", Config{Protos: []traffic.Proto{"sctp"}}, `proto: unknown "sctp"`},
		{"rounds", Config{Rounds: -3}, "rounds: -3 is negative"},
		{"slices", Config{Slices: 10001}, "slices: 10001 is outside 1..10000"},
		{"size", Config{Size: -1}, "size: -1 is negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Check()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
			// nsflow bench names the flag from Field.
			var fe *FieldError
			if !errors.As(err, &fe) || !strings.HasPrefix(tc.want, fe.Field+": ") {
				t.Errorf("error %v is not a FieldError of %q", err, tc.want[:strings.Index(tc.want, ":")])
			}
		})
	}
	c := Config{Protos: []traffic.Proto{traffic.UDP, traffic.TCP}}
	if err := c.normalize(); err != nil {
		t.Fatal(err)
	}
	if p, _ := c.payload(traffic.UDP, false); p != 18 {
		t.Errorf("default UDP payload %d, want 18 (64-byte frame)", p)
	}
	if p, _ := c.payload(traffic.TCP, false); p != traffic.DefaultTCPWrite {
		t.Errorf("default TCP write %d", p)
	}
}

// TestSettingsSizes: the report gives the size each protocol really used,
// defaults included, not the --size that was or was not given.
func TestSettingsSizes(t *testing.T) {
	tcp, udp := traffic.TCP, traffic.UDP
	for _, tc := range []struct {
		name   string
		cfg    Config
		size   int
		tcp    int
		udp    int
		nProto int
	}{
		{"tcp default", Config{}, traffic.DefaultTCPWrite, traffic.DefaultTCPWrite, 0, 1},
		{"udp default", Config{Protos: []traffic.Proto{udp}}, DefaultUDPFrame, 0, DefaultUDPFrame, 1},
		{"both defaults differ", Config{Protos: []traffic.Proto{tcp, udp}}, 0, traffic.DefaultTCPWrite, DefaultUDPFrame, 2},
		{"both given", Config{Protos: []traffic.Proto{udp, tcp}, Size: 1000}, 1000, 1000, 1000, 2},
		{"tcp given", Config{Size: 4096}, 4096, 4096, 0, 1},
	} {
		if err := tc.cfg.normalize(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		size, each := tc.cfg.sizes()
		if size != tc.size || each[tcp] != tc.tcp || each[udp] != tc.udp || len(each) != tc.nProto {
			t.Errorf("%s: size %d, sizes %v; want %d, tcp %d, udp %d", tc.name, size, each, tc.size, tc.tcp, tc.udp)
		}
	}
}

func TestSpread(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want Spread
	}{
		{nil, Spread{}},
		{[]float64{3}, Spread{3, 3, 3}},
		{[]float64{5, 1, 3}, Spread{3, 1, 5}},
		{[]float64{4, 1, 2, 10}, Spread{3, 1, 10}},
	} {
		if got := spread(tc.in); got != tc.want {
			t.Errorf("spread(%v) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestPairedRatio(t *testing.T) {
	s := func(round int, on bool, gbps float64) Sample {
		return Sample{Round: round, Instrumented: on, Gbps: gbps}
	}
	for _, tc := range []struct {
		name string
		in   []Sample
		want float64
	}{
		{"none", nil, 0},
		{"one round", []Sample{s(1, false, 10), s(1, true, 9)}, 0.9},
		// The machine slows down by half after the first round: the
		// medians' ratio would say 1, the rounds say 0.9, 1 and 0.9.
		{"drift", []Sample{s(1, false, 20), s(1, true, 18), s(2, true, 10), s(2, false, 10), s(3, false, 10), s(3, true, 9)}, 0.9},
		{"round without its pair", []Sample{s(1, false, 10), s(1, true, 5), s(2, true, 7)}, 0.5},
		{"zero off sample", []Sample{s(1, false, 0), s(1, true, 5)}, 0},
	} {
		if got := pairedRatio(tc.in); got != tc.want {
			t.Errorf("%s: pairedRatio = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestBracketed(t *testing.T) {
	for _, tc := range []struct {
		name        string
		off, on     []float64
		mode, modes int
		want        SliceRatio
	}{
		{"none", []float64{10}, nil, 0, 1, SliceRatio{}},
		{"one slice", []float64{10, 10}, []float64{9}, 0, 1, SliceRatio{Median: 0.9, Q25: 0.9, Q75: 0.9, Ratios: []float64{0.9}}},
		// The machine speeds up steadily: each on slice is compared with
		// its neighbours' mean, so the drift cancels (against the off
		// slice before it alone, they would read 0.99, 0.975, 0.964).
		{"drift", []float64{10, 12, 14, 16}, []float64{9.9, 11.7, 13.5}, 0, 1,
			SliceRatio{Median: 0.9, Q25: 0.9, Q75: 0.9, Ratios: []float64{0.9, 0.9, 0.9}}},
		{"quartiles", []float64{10, 10, 10, 10, 10}, []float64{8, 10, 9, 7}, 0, 1,
			SliceRatio{Median: 0.85, Q25: 0.8, Q75: 1, Ratios: []float64{0.8, 1, 0.9, 0.7}}},
		// Nothing arrived around a slice (the generator stalled): left out.
		{"empty neighbours", []float64{0, 0, 10}, []float64{5, 9}, 0, 1, SliceRatio{Median: 1.8, Q25: 1.8, Q75: 1.8, Ratios: []float64{1.8}}},
		// --hook-cost: nsflow's slices (mode 0) and the no-op's (mode 1)
		// alternate; each is bracketed by the off slices around it.
		{"first of two modes", []float64{10, 10, 20, 20, 10}, []float64{9, 14.25, 18, 14.25}, 0, 2,
			SliceRatio{Median: 0.9, Q25: 0.9, Q75: 0.9, Ratios: []float64{0.9, 0.9}}},
		{"second of two modes", []float64{10, 10, 20, 20, 10}, []float64{9, 14.25, 18, 14.25}, 1, 2,
			SliceRatio{Median: 0.95, Q25: 0.95, Q75: 0.95, Ratios: []float64{0.95, 0.95}}},
	} {
		got := bracketed(tc.off, tc.on, tc.mode, tc.modes)
		near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
		ok := near(got.Median, tc.want.Median) && near(got.Q25, tc.want.Q25) && near(got.Q75, tc.want.Q75) &&
			len(got.Ratios) == len(tc.want.Ratios)
		for i := range got.Ratios {
			ok = ok && near(got.Ratios[i], tc.want.Ratios[i])
		}
		if !ok {
			t.Errorf("%s: bracketed = %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestCheck(t *testing.T) {
	c := newCheck("x", "a", "b", traffic.Counts{Packets: 5, Bytes: 100}, traffic.Counts{Packets: 5, Bytes: 90}, true, false)
	if !c.OK || c.BytesDiff != 0 {
		t.Errorf("bytes not compared but counted: %+v", c)
	}
	c = newCheck("x", "a", "b", traffic.Counts{Packets: 4}, traffic.Counts{Packets: 5}, true, true)
	if c.OK || c.PacketsDiff != -1 {
		t.Errorf("difference hidden: %+v", c)
	}
}

// CheckSpec refuses, before anything is built, a file with no pair for a
// path and UDP frames larger than a pair's MTU; a frame that fits passes.
func TestCheckSpec(t *testing.T) {
	s, err := topology.Parse([]byte(`
name: t
namespaces: [{name: a}, {name: b}]
links:
  - mtu: 1280
    endpoints: [{namespace: a, interface: e0, addresses: [198.18.9.1/30]}, {namespace: b, interface: e0, addresses: ["fd00:9::2/64"]}]
  - mtu: 1280
    endpoints: [{namespace: a, interface: e1, addresses: [198.18.9.5/30]}, {namespace: b, interface: e1, addresses: [198.18.9.6/30]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	v6, err := topology.Parse([]byte(`
name: t
namespaces: [{name: a}, {name: b}]
links:
  - endpoints: [{namespace: a, interface: e0, addresses: ["fd00:9::1/64"]}, {namespace: b, interface: e0, addresses: ["fd00:9::2/64"]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Protos: []traffic.Proto{traffic.UDP}, Size: 1518}, "size: a 1518-byte frame carries 1500 bytes of IP, more than the 1280-byte MTU between a:e1 and b:e1"},
		{Config{Protos: []traffic.Proto{traffic.UDP}, Size: 1298}, ""},
		{Config{Protos: []traffic.Proto{traffic.UDP}, Size: 1299}, "size: a 1299-byte frame carries 1281 bytes of IP, more than the 1280-byte MTU"},
		{Config{Protos: []traffic.Proto{traffic.TCP}, Size: 1518}, ""}, // TCP segments to the MTU itself
		{Config{Paths: []Path{Bridge}}, "topology t has no bridge pair to measure: that needs two declared namespaces on one bridge"},
		{Config{Spec: v6, Protos: []traffic.Proto{traffic.UDP}}, "size: frame size 64 is too small"}, // IPv6 needs 82
		{Config{Protos: []traffic.Proto{traffic.TCP}, Size: 64 << 20}, "size: TCP write 67108864 is larger than 16777216"},
	} {
		if tc.cfg.Spec == nil {
			tc.cfg.Spec = s
		}
		err := tc.cfg.CheckSpec()
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
