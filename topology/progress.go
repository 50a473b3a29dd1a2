package topology

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
)

// Progress reports how far a long operation is: Done of Total steps of
// Phase (e.g. "namespaces", "links").
type Progress struct {
	Phase string
	Done  int
	Total int
}

// ProgressFunc receives progress reports; calls are serialized.
type ProgressFunc func(Progress)

// parallel runs fn(0..n-1) on up to workers goroutines, reporting progress
// under phase. It stops handing out work after the first error and
// returns that error.
func parallel(ctx context.Context, n, workers int, phase string, report ProgressFunc, fn func(i int) error) error {
	if n == 0 {
		return nil
	}
	workers = max(1, min(workers, n))
	var (
		next, done atomic.Int64
		mu         sync.Mutex
		firstErr   error
		wg         sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
					return
				}
				d := int(done.Add(1))
				if report != nil {
					mu.Lock()
					report(Progress{Phase: phase, Done: d, Total: n})
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		// The caller's context ended (ours is only cancelled on error).
		return context.Cause(ctx)
	}
	return firstErr
}

// defaultWorkers is how many namespaces are built at once. rtnl is one
// global lock, so more workers than CPUs mostly queue on it; a few keep
// it busy while others are in unshare or mount.
func defaultWorkers() int { return max(4, 2*runtime.GOMAXPROCS(0)) }
