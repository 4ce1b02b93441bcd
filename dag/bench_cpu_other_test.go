//go:build !unix

package dag

import "time"

// processCPUTime is not available here; the benchmarks report wall time only.
func processCPUTime() (time.Duration, bool) { return 0, false }
