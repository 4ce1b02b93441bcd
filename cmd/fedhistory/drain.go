package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// defaultDrainTimeout is how long serve lets requests in flight run on after
// SIGINT or SIGTERM before it cancels them. Together with cancelGrace it
// stays under the 30 s that process supervisors commonly allow (Kubernetes'
// default termination grace period, systemd's TimeoutStopSec is longer).
const defaultDrainTimeout = 20 * time.Second

// cancelGrace is how long cancelled requests get to write their answers
// (fedhistory answers a cancelled request 503 M_UNKNOWN at once) before
// their connections are closed regardless.
const cancelGrace = 5 * time.Second

// drainable is an http.Server whose requests' contexts can all be
// cancelled: every request's context derives from the server's BaseContext.
type drainable struct {
	server *http.Server
	cancel context.CancelFunc
}

// newDrainable makes server's requests cancellable by drain.
func newDrainable(server *http.Server) *drainable {
	base, cancel := context.WithCancel(context.Background())
	server.BaseContext = func(net.Listener) context.Context { return base }
	return &drainable{server: server, cancel: cancel}
}

// errForced is the error of a shutdown cut short by a second signal.
var errForced = errors.New("a second signal: stopped without waiting for the requests in flight")

// drain shuts the server down so that every request it accepted gets an
// answer: it stops accepting and waits up to timeout for the requests in
// flight to finish; then it cancels those still running, which answer at
// once, and waits up to cancelGrace for those answers to be written before
// it closes the connections left. A close of force (a second signal) cuts
// either wait short.
//
// It returns nil when every request finished or was answered, errForced
// when force cut a wait short, and an error when requests outlived
// cancelGrace after their cancellation.
func (d *drainable) drain(timeout time.Duration, force <-chan struct{}, logger *slog.Logger) error {
	defer d.cancel()
	forceCtx, stopForce := context.WithCancel(context.Background())
	defer stopForce()
	go func() {
		select {
		case <-force:
			stopForce()
		case <-forceCtx.Done():
		}
	}()

	logger.Info("shutting down: draining the requests in flight (a second signal stops at once)",
		"in_flight", requestsInFlight.Load(), "drain_timeout", timeout)
	drainCtx, cancelDrain := context.WithTimeout(forceCtx, timeout)
	defer cancelDrain()
	err := d.server.Shutdown(drainCtx)
	if err == nil {
		return nil
	}
	if forceCtx.Err() != nil {
		d.server.Close()
		return errForced
	}

	logger.Warn("shutting down: the drain timeout passed; cancelling the requests still in flight",
		"in_flight", requestsInFlight.Load())
	d.cancel()
	// Shutdown again: the listeners are closed already, and it closes each
	// connection once its answer is written.
	graceCtx, cancelGrace := context.WithTimeout(forceCtx, cancelGrace)
	defer cancelGrace()
	err = d.server.Shutdown(graceCtx)
	if err == nil {
		return nil
	}
	left := requestsInFlight.Load()
	d.server.Close()
	if forceCtx.Err() != nil {
		return errForced
	}
	return fmt.Errorf("closed the connections of %d requests still running after their cancellation: %w", left, err)
}
