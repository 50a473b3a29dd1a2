package traffic

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestUDPExact sends a known number of datagrams and checks every count
// against the kernel: the veth saw exactly what the generator sent, and
// what the generator received plus socket-buffer drops is what the
// namespace's UDP layer took in.
func TestUDPExact(t *testing.T) {
	p := newPair(t)
	for _, tc := range []struct {
		name          string
		server, src   netip.Addr
		frame         int
		streams, rate int
		v6            bool
	}{
		{name: "ipv4-64B", server: p.server4, frame: 64, streams: 1},
		{name: "ipv4-64B-streams", server: p.server4, frame: 64, streams: 3},
		{name: "ipv6-1500B", server: p.server6, frame: 1518, streams: 2, v6: true},
		{name: "ipv4-rate", server: p.server4, frame: 128, streams: 1, rate: 20000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			size, err := PayloadForFrame(tc.frame, tc.v6)
			if err != nil {
				t.Fatal(err)
			}
			const packets = 20000
			kBefore := linkStats(t, p.serverNS, p.serverIf)
			uBefore, err := ReadUDPStats(p.serverNS)
			if err != nil {
				t.Fatal(err)
			}
			res, err := Measure(context.Background(), Flow{
				Proto: UDP, ClientNetns: p.clientNS, ServerNetns: p.serverNS,
				Server: netip.AddrPortFrom(tc.server, 0), Streams: tc.streams,
				Size: size, Packets: packets, Rate: float64(tc.rate),
			})
			if err != nil {
				t.Fatal(err)
			}
			kAfter := linkStats(t, p.serverNS, p.serverIf)
			uAfter, err := ReadUDPStats(p.serverNS)
			if err != nil {
				t.Fatal(err)
			}
			udp := uAfter.Sub(uBefore)
			t.Logf("%+v udp=%+v", res, udp)

			if res.Sent.Packets != packets || res.Sent.Bytes != packets*uint64(size) {
				t.Errorf("sent %+v, want %d datagrams of %d bytes", res.Sent, packets, size)
			}
			if got := kAfter.RxPackets - kBefore.RxPackets; got != res.Sent.Packets {
				t.Errorf("kernel rx_packets on %s grew by %d, generator sent %d", p.serverIf, got, res.Sent.Packets)
			}
			wantBytes := res.Sent.Packets * uint64(WireBytes(size, tc.v6))
			if got := kAfter.RxBytes - kBefore.RxBytes; got != wantBytes {
				t.Errorf("kernel rx_bytes grew by %d, want %d", got, wantBytes)
			}
			if res.Received.Packets+res.Lost != res.Sent.Packets {
				t.Errorf("received %d + lost %d != sent %d", res.Received.Packets, res.Lost, res.Sent.Packets)
			}
			if udp.InDatagrams != res.Received.Packets || udp.RcvbufErrors != res.Lost {
				t.Errorf("UDP MIB in=%d rcvbuf_errors=%d, generator received %d lost %d",
					udp.InDatagrams, udp.RcvbufErrors, res.Received.Packets, res.Lost)
			}
			if res.Received.Packets == 0 || res.Received.Bytes != res.Received.Packets*uint64(size) {
				t.Errorf("received %+v", res.Received)
			}
			if res.Foreign != 0 {
				t.Errorf("%d foreign datagrams", res.Foreign)
			}
			if tc.rate > 0 {
				// 20000 datagrams at 20000/s: about a second, never
				// much less.
				if res.Elapsed < 900*time.Millisecond {
					t.Errorf("rate %d/s: %d datagrams took only %v", tc.rate, packets, res.Elapsed)
				}
			}
		})
	}
}

// TestTCPBytes checks that a timed TCP bulk run moves bytes and that the
// server read exactly what the clients wrote.
func TestTCPBytes(t *testing.T) {
	p := newPair(t)
	for _, streams := range []int{1, 4} {
		kBefore := linkStats(t, p.serverNS, p.serverIf)
		res, err := Measure(context.Background(), Flow{
			Proto: TCP, ClientNetns: p.clientNS, ServerNetns: p.serverNS,
			Server: netip.AddrPortFrom(p.server4, 0), Streams: streams, Duration: 300 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		kAfter := linkStats(t, p.serverNS, p.serverIf)
		t.Logf("streams=%d %+v %.2f Gbit/s", streams, res, res.Gbps())
		if res.Sent.Bytes == 0 || res.Received.Bytes != res.Sent.Bytes {
			t.Errorf("streams=%d: sent %d bytes, received %d", streams, res.Sent.Bytes, res.Received.Bytes)
		}
		// The wire carried at least the payload.
		if got := kAfter.RxBytes - kBefore.RxBytes; got < res.Received.Bytes {
			t.Errorf("kernel rx_bytes grew by %d, less than the %d payload bytes", got, res.Received.Bytes)
		}
		if res.Elapsed < 300*time.Millisecond || res.Elapsed > 15*time.Second {
			t.Errorf("elapsed %v for a 300ms run", res.Elapsed)
		}
	}
}

// TestStop ends an open-ended flow from outside.
func TestStop(t *testing.T) {
	p := newPair(t)
	for _, proto := range []Proto{TCP, UDP} {
		r, err := Start(context.Background(), Flow{Proto: proto, ClientNetns: p.clientNS, ServerNetns: p.serverNS,
			Server: netip.AddrPortFrom(p.server4, 0), Rate: 10000})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		// Stop may be called from several places at once (Ctrl-C and
		// the end of a run); every caller gets the same result.
		again := make(chan Result, 1)
		go func() { res, _ := r.Stop(); again <- res }()
		res, err := r.Stop()
		if err != nil {
			t.Fatalf("%s: %v", proto, err)
		}
		if other := <-again; other != res {
			t.Errorf("%s: two Stops saw %+v and %+v", proto, res, other)
		}
		if res.Received.Bytes == 0 || res.Received.Bytes != res.Sent.Bytes {
			t.Errorf("%s: sent %+v received %+v", proto, res.Sent, res.Received)
		}
	}
}

func TestFlowErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    Flow
		want string
	}{
		{"no proto", Flow{Server: netip.MustParseAddrPort("198.18.0.1:1")}, "unknown protocol"},
		{"no server", Flow{Proto: TCP}, "server: no address"},
		{"small udp", Flow{Proto: UDP, Server: netip.MustParseAddrPort("198.18.0.1:1"), Size: 4}, "size: UDP payload 4"},
		{"mixed family", Flow{Proto: UDP, Server: netip.MustParseAddrPort("198.18.0.1:1"), Source: netip.MustParseAddr("fd00::1")}, "different families"},
		{"batch", Flow{Proto: UDP, Server: netip.MustParseAddrPort("198.18.0.1:1"), Batch: 5000}, "batch"},
		{"netns", Flow{Proto: UDP, Server: netip.MustParseAddrPort("198.18.0.1:0"), ServerNetns: "/nonexistent/ns"}, "/nonexistent/ns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Start(context.Background(), tc.f)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestPayloadForFrame(t *testing.T) {
	for _, tc := range []struct {
		frame int
		v6    bool
		want  int
		err   bool
	}{
		{64, false, 18, false},
		{1518, false, 1472, false},
		{1518, true, 1452, false},
		{60, false, 0, true},
		{64, true, 0, true},
		{82, true, 16, false},
	} {
		got, err := PayloadForFrame(tc.frame, tc.v6)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("PayloadForFrame(%d, %v) = %d, %v; want %d (error %v)", tc.frame, tc.v6, got, err, tc.want, tc.err)
		}
		if err == nil && WireBytes(got, tc.v6) != tc.frame-EthernetFCS {
			t.Errorf("WireBytes(%d) = %d, want %d", got, WireBytes(got, tc.v6), tc.frame-EthernetFCS)
		}
	}
}
