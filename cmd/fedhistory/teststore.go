package main

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/faultstore"
)

// testStoreLatencyEnv names an environment variable for tests only: set to
// a duration, serve delays every call to its store by that long (a call
// whose request is cancelled meanwhile returns at once with the context's
// error), so that a test can hold requests in flight while it shuts the
// server down. It is not an option, and not in --help: nobody wants a slow
// server.
const testStoreLatencyEnv = "FEDHISTORY_TEST_STORE_LATENCY"

// withTestStoreLatency wraps store as testStoreLatencyEnv asks, saying so on
// stderr, or returns it as it is when the variable is unset.
func withTestStoreLatency(store fedhistory.EventStore, stderr io.Writer) (fedhistory.EventStore, error) {
	value, ok := os.LookupEnv(testStoreLatencyEnv)
	if !ok {
		return store, nil
	}
	latency, err := time.ParseDuration(value)
	if err != nil || latency < 0 {
		return nil, fmt.Errorf("%s=%q: want a duration such as 500ms", testStoreLatencyEnv, value)
	}
	fmt.Fprintf(stderr, "fedhistory: %s=%s: every store call waits %s (for tests only)\n", testStoreLatencyEnv, value, latency)
	return faultstore.Wrap(store, faultstore.Faults{Latency: latency}), nil
}
