package agent

import (
	"sync"

	"github.com/vishvananda/netns"

	"github.com/nsflow/nsflow/internal/nsenter"
)

// peers resolves the far end of veth pairs: a link reports its peer as an
// ifindex in the namespace its own namespace calls PeerNetnsID. Which of
// the discovered namespaces that id names is asked of the kernel once
// (RTM_GETNSID for each candidate) and cached.
type peers struct {
	mu    sync.Mutex
	cache map[peerKey]uint64 // -> cookie of the peer's namespace; 0 unknown
}

type peerKey struct {
	cookie uint64
	nsid   int
}

// peerLabelLocked names the namespace at the other end of the veth that a
// packet entered through, when that end is a plain veth (not a bridge
// port, which stands for many senders). Callers hold a.mu (read).
func (a *Agent) peerLabelLocked(cookie uint64, ifindex uint32) (string, bool) {
	s := a.byCookie[cookie]
	if s == nil {
		return "", false
	}
	p := s.links[int(ifindex)]
	if p == nil || p.link.Kind != "veth" || p.link.PeerNetnsID < 0 {
		return "", false
	}
	peer := a.peerNetnsLocked(s, p.link.PeerNetnsID)
	if peer == nil {
		return "", false
	}
	if end := peer.links[p.link.PeerIndex]; end == nil || end.link.BridgePort() {
		return "", false
	}
	return peer.label, true
}

func (a *Agent) peerNetnsLocked(s *nsState, nsid int) *nsState {
	a.peers.mu.Lock()
	defer a.peers.mu.Unlock()
	if a.peers.cache == nil {
		a.peers.cache = map[peerKey]uint64{}
	}
	k := peerKey{s.cookie, nsid}
	if c, ok := a.peers.cache[k]; ok {
		return a.byCookie[c]
	}
	c := a.findNsidLocked(s, nsid)
	a.peers.cache[k] = c
	return a.byCookie[c]
}

// findNsidLocked asks, in s's namespace, which discovered namespace has
// the id nsid; 0 when none.
func (a *Agent) findNsidLocked(s *nsState, nsid int) uint64 {
	h, err := openNetns(s.ns.Path)
	if err != nil {
		return 0
	}
	defer h.Close()
	nh, err := nsenter.NewHandle(h)
	if err != nil {
		return 0
	}
	defer nh.Close()
	for c, x := range a.byCookie {
		if x == s {
			continue
		}
		xh, err := openNetns(x.ns.Path)
		if err != nil {
			continue
		}
		id, err := nh.GetNetNsIdByFd(int(xh))
		xh.Close()
		if err == nil && id == nsid {
			return c
		}
	}
	return 0
}

// openNetns opens a namespace by path; "" is the agent's own.
func openNetns(path string) (netns.NsHandle, error) {
	if path == "" {
		return netns.Get()
	}
	return netns.GetFromPath(path)
}

// forgetPeers drops cached resolutions involving a removed namespace.
func (a *Agent) forgetPeers(cookie uint64) {
	a.peers.mu.Lock()
	defer a.peers.mu.Unlock()
	for k, c := range a.peers.cache {
		if k.cookie == cookie || c == cookie {
			delete(a.peers.cache, k)
		}
	}
}
