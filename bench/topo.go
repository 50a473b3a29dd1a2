package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nsflow/nsflow/topology"
	"github.com/vishvananda/netlink"
)

// env is the topology a run measures, and how to give it back.
type env struct {
	spec  *topology.Spec
	built bool
}

// prepare builds the run topology under a random prefix, or uses the
// given file's namespaces: as they are when all are there, brought up for
// the run (and taken down after it) when none is. A file that is partly up
// is refused: taking it down after the run would remove what was there
// before it.
func prepare(ctx context.Context, cfg Config) (*env, error) {
	if cfg.Spec != nil {
		switch present, missing := existing(cfg.Spec); {
		case len(missing) == 0:
			return &env{spec: cfg.Spec}, nil
		case len(present) == 0:
			return up(ctx, cfg.Spec)
		default:
			return nil, fmt.Errorf("topology %s is partly up (namespaces %v exist, %v do not): bring it up (nsflow topology up) or down first",
				cfg.Spec.Name, present, missing)
		}
	}
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	// "nb" plus 6 hex digits and a dash: bridge port names stay within
	// the 15 bytes of an interface name.
	s, err := runSpec(cfg.Paths, cfg.Pairs).WithPrefix("nb" + hex.EncodeToString(b[:]) + "-")
	if err != nil {
		return nil, fmt.Errorf("run topology: %w", err)
	}
	return up(ctx, s)
}

// upTries bounds attempts to bring the topology up, or down, when the
// kernel keeps interrupting netlink dumps, which happens while other
// tools churn through interfaces on the same host.
const upTries = 3

func up(ctx context.Context, s *topology.Spec) (*env, error) {
	e := &env{spec: s, built: true}
	var err error
	for try := 1; try <= upTries; try++ {
		if _, err = topology.Up(ctx, s, topology.Options{}); err == nil {
			return e, nil
		}
		if errors.Is(err, os.ErrPermission) {
			break // nothing was built, and Down could not run either
		}
		// Up rolls back on failure; Down makes sure, so that nothing
		// half-built is left even if the rollback failed too.
		if rerr := e.release(); rerr != nil {
			err = errors.Join(err, rerr)
			break
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) || ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("bring up topology %s: %w", s.Name, err)
}

// existing splits the file's namespaces into those that exist and those
// that do not.
func existing(s *topology.Spec) (present, missing []string) {
	for _, n := range s.Namespaces {
		if _, err := os.Stat(s.NetnsPath(n.Name)); err == nil {
			present = append(present, n.Name)
		} else {
			missing = append(missing, n.Name)
		}
	}
	return present, missing
}

// release removes what prepare built. It does not use the run's context:
// cleanup must happen after a Ctrl-C too.
func (e *env) release() error {
	if !e.built {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := topology.Down(ctx, e.spec, topology.Options{})
	for try := 1; errors.Is(err, netlink.ErrDumpInterrupted) && try < upTries; try++ {
		time.Sleep(100 * time.Millisecond)
		res, err = topology.Down(ctx, e.spec, topology.Options{})
	}
	if err != nil {
		return fmt.Errorf("remove topology %s: %w", e.spec.Name, err)
	}
	if len(res.Foreign) > 0 {
		return errors.New(res.String())
	}
	return nil
}
