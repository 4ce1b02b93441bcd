//go:build unix

package dag

import (
	"syscall"
	"time"
)

// processCPUTime returns the CPU time the process has used, user and
// system, garbage collection included.
func processCPUTime() (time.Duration, bool) {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0, false
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()), true
}
