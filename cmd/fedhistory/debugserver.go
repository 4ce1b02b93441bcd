package main

import (
	"expvar"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime"
	"sync"
)

// publishGoroutines adds the live goroutine count and the federation
// requests in flight to expvar, next to the "memstats" and "cmdline" that
// expvar publishes itself. expvar.Publish panics on a second call with the
// same name, hence the Once.
var publishGoroutines = sync.OnceFunc(func() {
	expvar.Publish("goroutines", expvar.Func(func() any { return runtime.NumGoroutine() }))
	expvar.Publish("requests_in_flight", expvar.Func(func() any { return requestsInFlight.Load() }))
})

// startDebugServer serves, on addr, what an operator or a load test needs
// to watch the process: /debug/vars (expvar: goroutines, requests in
// flight, memstats) and /debug/pprof/. It is a separate listener, never the
// federation one, so that nothing of it is reachable from other servers
// unless the operator chooses an address that is.
func startDebugServer(addr string, logger *slog.Logger) (*loopbackServer, error) {
	publishGoroutines()
	mux := http.NewServeMux()
	mux.Handle("/debug/vars", expvar.Handler())
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)

	listener, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--debug-addr: listening on %s: %w", addr, err)
	}
	s := &loopbackServer{
		URL:    "http://" + listener.Addr().String(),
		server: newHTTPServer(mux, logger),
		done:   make(chan error, 1),
	}
	// A CPU profile or trace runs for as long as asked (?seconds=N).
	s.server.WriteTimeout = 0
	go func() { s.done <- s.server.Serve(listener) }()
	return s, nil
}
