// Package chaos holds the chaos suite of "fedhistory serve --db", which
// only builds with the "chaos" tag (run from the repository root, whose
// go.work joins the interop module to fedhistory's):
//
//	go test -tags chaos -run TestChaos -v -timeout 30m ./interop/chaos/
//
// It starts its own PostgreSQL instance (initdb and postgres from
// FEDHISTORY_CHAOS_PG_BIN, default /usr/lib/postgresql/15/bin, on a free
// loopback port; as root it runs them as the user nobody), imports a
// generated room with "fedhistory import", serves it with "fedhistory serve
// --db" through a TCP proxy that can add latency, drives mixed signed load
// from pinned origins, and injects, one after the other: a PostgreSQL
// restart, a kill and an outage, a paused database (SIGSTOP longer than the
// request timeout, then SIGCONT), a slow database, a hanging key server
// claimed by one origin and by many, max_connections exhaustion, and
// SIGTERM under load. After each it checks that serve did not crash, that
// every response was a valid answer, that serve recovered, that the pinned
// origins were unaffected where they should be, that goroutines and heap
// came back to the baseline, and that the database is unchanged.
//
// With -short the faults are held for less time (the pause still outlasts
// the request timeout): about three minutes in all, against four and a
// half for the full run. FEDHISTORY_CHAOS_REPORT names a file to write the
// timeline table to, and FEDHISTORY_CHAOS_LOGS a directory to copy serve's
// and PostgreSQL's logs to; TESTING.md records a run.
package chaos
