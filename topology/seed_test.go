package topology

import "testing"

func TestSeedIsValid(t *testing.T) {
	s, err := Load("../examples/seed.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.WithPrefix("t123456-")
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "t123456-seed" || p.NetnsPath("t123456-ns1") != "/run/netns/t123456-ns1" {
		t.Errorf("prefixed: name %q", p.Name)
	}
}
