package verify

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"strings"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// firewallTable is a packet-filter table a namespace holds, with the
// number of rules beyond the built-in chains' policies, and the chains
// whose policy drops what no rule accepts: with no rule at all, those
// still filter.
type firewallTable struct {
	kind  string // "nftables", "iptables", "ip6tables"
	name  string
	rules int
	drops []string
}

func (t firewallTable) String() string {
	s := fmt.Sprintf("%s table %s with %d rules", t.kind, t.name, t.rules)
	if len(t.drops) > 0 {
		s += ", policy drop in chain " + strings.Join(t.drops, ", ")
	}
	return s
}

// readFirewall runs on a thread inside the namespace: nftables through
// nfnetlink, legacy iptables through /proc/thread-self/net (the calling
// thread's namespace, not the process's) and IPT_SO_GET_INFO.
func readFirewall() ([]firewallTable, error) {
	tables, err := nftTables()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	for _, fam := range []struct {
		kind, file string
		af, level  int
	}{{"iptables", "ip_tables_names", unix.AF_INET, unix.SOL_IP}, {"ip6tables", "ip6_tables_names", unix.AF_INET6, unix.SOL_IPV6}} {
		names, err := readLines("/proc/thread-self/net/" + fam.file)
		if err != nil {
			continue // module not loaded: no legacy tables anywhere
		}
		for _, n := range names {
			t, err := legacyTable(fam.af, fam.level, n)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", fam.kind, n, err)
			}
			t.kind = fam.kind
			tables = append(tables, t)
		}
	}
	return tables, nil
}

func readLines(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out, sc.Err()
}

// iptGetinfo is struct ipt_getinfo (same layout for ip6t_getinfo).
type iptGetinfo struct {
	Name       [32]byte
	ValidHooks uint32
	HookEntry  [5]uint32
	Underflow  [5]uint32
	NumEntries uint32
	Size       uint32
}

const (
	iptSoGetInfo    = 64 // IPT_SO_GET_INFO, IP6T_SO_GET_INFO
	iptSoGetEntries = 65 // IPT_SO_GET_ENTRIES, IP6T_SO_GET_ENTRIES
	// Offsets in struct ipt_entry / ip6t_entry of target_offset (after
	// struct ipt_ip, 84 bytes, or ip6t_ip6, 136, and nfcache), and of the
	// entries in struct ipt_get_entries (name[32], size, 8-byte aligned).
	iptTargetOffset  = 88
	ip6tTargetOffset = 140
	getEntriesHeader = 40
	// A standard target's verdict follows struct xt_entry_target (32
	// bytes); a built-in chain's policy DROP is -NF_DROP-1.
	xtTargetHeader = 32
	verdictDrop    = -1
)

var legacyHooks = [...]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// legacyTable reads a legacy table: its entries beyond one policy per
// built-in chain and the closing error entry, and the built-in chains
// whose policy is DROP.
func legacyTable(af, level int, table string) (firewallTable, error) {
	t := firewallTable{name: table}
	fd, err := unix.Socket(af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return t, err
	}
	defer unix.Close(fd)
	var info iptGetinfo
	copy(info.Name[:], table)
	l := uint32(unsafe.Sizeof(info))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), iptSoGetInfo,
		uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return t, e
	}
	t.rules = max(0, int(info.NumEntries)-bits.OnesCount32(info.ValidHooks)-1)

	buf := make([]byte, getEntriesHeader+int(info.Size))
	copy(buf, table)
	binary.NativeEndian.PutUint32(buf[32:], info.Size)
	l = uint32(len(buf))
	_, _, e = unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), iptSoGetEntries,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return t, fmt.Errorf("entries: %w", e) // EAGAIN: the table changed since the info
	}
	entries := buf[getEntriesHeader:]
	toff := iptTargetOffset
	if af == unix.AF_INET6 {
		toff = ip6tTargetOffset
	}
	for h, name := range legacyHooks {
		if info.ValidHooks&(1<<h) == 0 {
			continue
		}
		at := int(info.Underflow[h])
		if at+toff+2 > len(entries) {
			return t, fmt.Errorf("chain %s: policy entry at %d is past the table's end", name, at)
		}
		v := at + int(binary.NativeEndian.Uint16(entries[at+toff:])) + xtTargetHeader
		if v+4 > len(entries) {
			return t, fmt.Errorf("chain %s: policy verdict at %d is past the table's end", name, v)
		}
		if int32(binary.NativeEndian.Uint32(entries[v:])) == verdictDrop {
			t.drops = append(t.drops, name)
		}
	}
	return t, nil
}

const (
	nfnlSubsysNftables = 10
	nftMsgGetTable     = 1
	nftMsgGetChain     = 4
	nftMsgGetRule      = 7
	nftaTableName      = 1
	nftaChainTable     = 1
	nftaChainName      = 3
	nftaChainHook      = 4
	nftaChainPolicy    = 5
	nftaRuleTable      = 1
	nfDrop             = 0
)

// nftTables lists nftables tables and counts their rules.
func nftTables() ([]firewallTable, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	tv := unix.NsecToTimeval(2e9)
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	var tables []firewallTable
	var fams []uint8
	err = nftDump(fd, nftMsgGetTable, 0, nil, func(f uint8, attrs map[uint16][]byte) {
		tables = append(tables, firewallTable{kind: "nftables", name: cString(attrs[nftaTableName])})
		fams = append(fams, f)
	})
	if err != nil {
		return nil, err
	}
	// Rules are dumped one table at a time: the kernel refuses a rule dump
	// across all families.
	for i := range tables {
		attr := nl.NewRtAttr(nftaRuleTable, nl.ZeroTerminated(tables[i].name))
		err = nftDump(fd, nftMsgGetRule, fams[i], attr.Serialize(), func(uint8, map[uint16][]byte) { tables[i].rules++ })
		if err != nil {
			return nil, err
		}
		// Base chains (those on a hook) whose policy drops.
		attr = nl.NewRtAttr(nftaChainTable, nl.ZeroTerminated(tables[i].name))
		err = nftDump(fd, nftMsgGetChain, fams[i], attr.Serialize(), func(_ uint8, a map[uint16][]byte) {
			if cString(a[nftaChainTable]) != tables[i].name {
				return // a kernel that does not filter the dump by table
			}
			if p := a[nftaChainPolicy]; a[nftaChainHook] != nil && len(p) == 4 && binary.BigEndian.Uint32(p) == nfDrop {
				tables[i].drops = append(tables[i].drops, cString(a[nftaChainName]))
			}
		})
		if err != nil {
			return nil, err
		}
		tables[i].name = nftFamily(fams[i]) + " " + tables[i].name
	}
	return tables, nil
}

func nftFamily(f uint8) string {
	if n, ok := map[uint8]string{1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}[f]; ok {
		return n
	}
	return fmt.Sprintf("family%d", f)
}

func cString(b []byte) string { return strings.TrimRight(string(b), "\x00") }

// nftDump sends one NLM_F_DUMP request and calls fn for every object.
func nftDump(fd int, msg uint16, family uint8, attrs []byte, fn func(family uint8, attrs map[uint16][]byte)) error {
	req := make([]byte, unix.NLMSG_HDRLEN+4, unix.NLMSG_HDRLEN+4+len(attrs))
	req[unix.NLMSG_HDRLEN] = family
	req = append(req, attrs...)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], nfnlSubsysNftables<<8|msg)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], 1)
	// nfgenmsg: family (AF_UNSPEC for all), version 0, res_id 0.
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
						return syscall.Errno(errno)
					}
				}
				return errors.New("netlink error")
			}
			if len(m.Data) < 4 {
				continue
			}
			attrs, err := nl.ParseRouteAttr(m.Data[4:])
			if err != nil {
				return err
			}
			am := map[uint16][]byte{}
			for _, a := range attrs {
				am[a.Attr.Type&^unix.NLA_F_NESTED] = a.Value
			}
			fn(m.Data[0], am)
		}
	}
}
