package verify

import (
	"fmt"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The responders answer every probe with the namespace they were started
// for and the kernel's cookie of the namespace their socket really lives
// in, so a probe proves which stack answered it, not just that something
// did.
const magic = "nsflow-verify"

type identity struct {
	claimed string
	cookie  uint64
}

// reply is the answer to a request carrying nonce ("" for TCP, which
// answers on connect).
func (id identity) reply(nonce string) []byte {
	if nonce == "" {
		nonce = "-"
	}
	return fmt.Appendf(nil, "%s %s %s %d\n", magic, nonce, id.claimed, id.cookie)
}

// parseReply reads a responder's answer; ok is false for anything that is
// not one (a foreign listener) or answers another nonce.
func parseReply(b []byte, nonce string) (identity, bool) {
	f := strings.Fields(string(b))
	if nonce == "" {
		nonce = "-"
	}
	if len(f) != 4 || f[0] != magic || f[1] != nonce {
		return identity{}, false
	}
	c, err := strconv.ParseUint(f[3], 10, 64)
	if err != nil {
		return identity{}, false
	}
	return identity{claimed: f[2], cookie: c}, true
}

func request(nonce string) []byte { return []byte(magic + " " + nonce + "\n") }

func parseRequest(b []byte) (string, bool) {
	f := strings.Fields(string(b))
	if len(f) != 2 || f[0] != magic {
		return "", false
	}
	return f[1], true
}

// socketCookie is the cookie of the network namespace a socket lives in.
func socketCookie(rc syscall.RawConn) (uint64, error) {
	var c uint64
	var serr error
	err := rc.Control(func(fd uintptr) {
		c, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	})
	if err == nil {
		err = serr
	}
	return c, err
}
