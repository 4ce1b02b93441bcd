// Package shares runs work over n items on every core: the items are cut
// into contiguous shares, one goroutine each, so that a caller which stops
// a share at its first bad item still finds the first bad item overall in
// the first share that stopped.
package shares

import (
	"runtime"
	"sync"
)

// Run calls work(share, lo, hi) for each share [lo, hi) of [0, n),
// concurrently, and waits for them all: one share per minShare items
// (rounded up; a goroutine is not worth fewer), at most
// runtime.GOMAXPROCS(0) of them (so share < that), of equal sizes give or
// take one.
func Run(n, minShare int, work func(share, lo, hi int)) {
	count := min(runtime.GOMAXPROCS(0), (n+minShare-1)/minShare)
	var wg sync.WaitGroup
	for share := range count {
		wg.Go(func() { work(share, share*n/count, (share+1)*n/count) })
	}
	wg.Wait()
}
