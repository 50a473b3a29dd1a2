package discovery

import "testing"

// TestLabel: every namespace gets a label no other can have, whatever
// its name.
func TestLabel(t *testing.T) {
	for _, tc := range []struct {
		n    Namespace
		want string
	}{
		{Namespace{Inode: 4026531840, Host: true}, "host"},
		{Namespace{Inode: 4026532001}, "netns-4026532001"},
		{Namespace{Inode: 1, Name: "blue", Path: "/run/netns/blue"}, "blue"},
		{Namespace{Inode: 2, Name: "host", Path: "/run/netns/host"}, "/run/netns/host"},
		{Namespace{Inode: 3, Name: "unknown", Path: "/run/netns/unknown"}, "/run/netns/unknown"},
		{Namespace{Inode: 4, Name: "netns-4026532001", Path: "/run/netns/netns-4026532001"}, "/run/netns/netns-4026532001"},
		{Namespace{Inode: 5, Name: "netns-", Path: "/run/netns/netns-"}, "netns-"},
		{Namespace{Inode: 6, Name: "netns-blue", Path: "/run/netns/netns-blue"}, "netns-blue"},
		{Namespace{Inode: 7, Name: "hosts", Path: "/run/netns/hosts"}, "hosts"},
	} {
		if got := tc.n.Label(); got != tc.want {
			t.Errorf("%+v: label %q, want %q", tc.n, got, tc.want)
		}
	}
}
