package traffic

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/nsflow/nsflow/internal/nsenter"
)

// UDPStats are a namespace's UDP counters from /proc/net/snmp and
// /proc/net/snmp6, IPv4 and IPv6 summed. They explain where datagrams that
// reached a namespace but not the generator went (a full socket buffer).
type UDPStats struct {
	InDatagrams  uint64 `json:"in_datagrams"`
	NoPorts      uint64 `json:"no_ports"`
	InErrors     uint64 `json:"in_errors"`
	RcvbufErrors uint64 `json:"rcvbuf_errors"`
	OutDatagrams uint64 `json:"out_datagrams"`
	SndbufErrors uint64 `json:"sndbuf_errors"`
}

// Sub returns s - o, field by field.
func (s UDPStats) Sub(o UDPStats) UDPStats {
	return UDPStats{
		InDatagrams:  s.InDatagrams - o.InDatagrams,
		NoPorts:      s.NoPorts - o.NoPorts,
		InErrors:     s.InErrors - o.InErrors,
		RcvbufErrors: s.RcvbufErrors - o.RcvbufErrors,
		OutDatagrams: s.OutDatagrams - o.OutDatagrams,
		SndbufErrors: s.SndbufErrors - o.SndbufErrors,
	}
}

// ReadUDPStats reads the UDP counters of the namespace at netnsPath.
// /proc/thread-self/net shows the namespace of the reading thread, which
// nsenter.Do puts inside the target.
func ReadUDPStats(netnsPath string) (UDPStats, error) {
	var s UDPStats
	err := nsenter.Do(netnsPath, func() error {
		v4, err := readSNMP("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		v6, err := readSNMP("/proc/thread-self/net/snmp6")
		if err != nil && !os.IsNotExist(err) { // no IPv6 in the kernel
			return err
		}
		for _, f := range []struct {
			dst  *uint64
			name string
		}{
			{&s.InDatagrams, "InDatagrams"}, {&s.NoPorts, "NoPorts"}, {&s.InErrors, "InErrors"},
			{&s.RcvbufErrors, "RcvbufErrors"}, {&s.OutDatagrams, "OutDatagrams"}, {&s.SndbufErrors, "SndbufErrors"},
		} {
			*f.dst = v4["Udp"+f.name] + v6["Udp6"+f.name]
		}
		return nil
	})
	if err != nil {
		return UDPStats{}, fmt.Errorf("udp counters of %s: %w", nsName(netnsPath), err)
	}
	return s, nil
}

// readSNMP parses both layouts: snmp's pairs of "Proto: names" and
// "Proto: values" lines, and snmp6's "Name value" lines. Keys are the
// protocol prefix joined to the name (UdpInDatagrams, Udp6InDatagrams).
func readSNMP(path string) (map[string]uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]uint64{}
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		if proto, ok := strings.CutSuffix(fields[0], ":"); ok {
			if names == nil || names[0] != proto {
				names = append([]string{proto}, fields[1:]...)
				continue
			}
			for i, v := range fields[1:] {
				if i+1 < len(names) {
					n, _ := strconv.ParseUint(v, 10, 64)
					out[proto+names[i+1]] = n
				}
			}
			names = nil
			continue
		}
		n, _ := strconv.ParseUint(fields[1], 10, 64)
		out[fields[0]] = n
	}
	return out, sc.Err()
}
