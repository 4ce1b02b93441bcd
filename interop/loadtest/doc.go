// Package loadtest holds the load test of "fedhistory serve", which only
// builds with the "load" tag (run from the repository root, whose go.work
// joins the interop module to fedhistory's):
//
//	go test -tags load -run TestLoad -v ./interop/loadtest/
//
// It builds the fedhistory command, generates a room dump with it, starts
// "fedhistory serve --debug-addr" on loopback, and drives it with vegeta
// (as a library) at a fixed rate of signed backfill and get_missing_events
// requests mixed with invalid ones, for FEDHISTORY_LOAD_DURATION (default
// 60s) at FEDHISTORY_LOAD_RATE requests per second (default 200). It reports
// the success rate, p50/p99 latency, and the server's goroutine count and
// live heap before, during and after the attack; TESTING.md records a run.
package loadtest
