package main

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/sqlstore"
)

// capabilityEndpoints lists the endpoints a handler serves for a store of
// store's type: the two walks, and those its capabilities allow (see
// fedhistory.New), sorted by path as Handler.Endpoints sorts them.
func capabilityEndpoints(store fedhistory.EventStore) []string {
	endpoints := []string{
		"GET /_matrix/federation/v1/backfill/{roomId}",
		"POST /_matrix/federation/v1/get_missing_events/{roomId}",
	}
	if _, ok := store.(fedhistory.StateStore); ok {
		endpoints = append(endpoints,
			"GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}",
			"GET /_matrix/federation/v1/state/{roomId}",
			"GET /_matrix/federation/v1/state_ids/{roomId}")
	}
	if _, ok := store.(fedhistory.EventLookupStore); ok {
		endpoints = append(endpoints, "GET /_matrix/federation/v1/event/{eventId}")
	}
	if _, ok := store.(fedhistory.TimestampStore); ok {
		endpoints = append(endpoints, "GET /_matrix/federation/v1/timestamp_to_event/{roomId}")
	}
	slices.SortFunc(endpoints, func(a, b string) int {
		_, pathA, _ := strings.Cut(a, " ")
		_, pathB, _ := strings.Cut(b, " ")
		return strings.Compare(pathA, pathB)
	})
	return endpoints
}

// TestServeServesWhatItsStoreAllows checks that serve hands the handler
// its store with every capability: it logs, on one line, the endpoints that
// the store's type allows, all seven for the in-memory store; and each
// inspecting subcommand prints the same from a SQLite database as from
// memory where the database's store allows the endpoint, and gets 404
// M_UNRECOGNIZED where it does not.
func TestServeServesWhatItsStoreAllows(t *testing.T) {
	memoryEndpoints := capabilityEndpoints(&memstore.Store{})
	require.Len(t, memoryEndpoints, 7, "the in-memory store has every capability")
	want := map[string][]string{"memory": memoryEndpoints, "sqlite": capabilityEndpoints(&sqlstore.Store{})}
	worlds := map[string]*inspectWorld{"memory": newInspectWorld(t, "memory"), "sqlite": newInspectWorld(t, "sqlite")}
	served := func(store, endpoint string) bool {
		return slices.ContainsFunc(want[store], func(e string) bool { return strings.Contains(e, "/"+endpoint+"/") })
	}
	for _, pick := range []func(*inspectWorld) *inspectRoom{
		func(w *inspectWorld) *inspectRoom { return w.erased },
		func(w *inspectWorld) *inspectRoom { return w.plain },
	} {
		outputs := map[string]map[string]string{"memory": {}, "sqlite": {}}
		for _, store := range []string{"memory", "sqlite"} {
			w := worlds[store]
			room := pick(w)
			mid := room.events[len(room.events)/2]
			version := "10"
			if room == w.plain {
				version = "11"
			}
			for _, c := range []struct {
				endpoint string
				room     *inspectRoom
				args     []string
			}{
				{"state_ids", room, []string{"state-ids", "--event", mid.ID}},
				{"state", room, []string{"state", "--event", mid.ID, "--room-version", version}},
				{"event_auth", room, []string{"event-auth", "--event", mid.ID}},
				{"event", nil, []string{"event", "--event", mid.ID, "--room-version", version}},
				{"timestamp_to_event", room, []string{"timestamp", "--ts", strconv.FormatInt(mid.OriginServerTS-1, 10), "--dir", "f"}},
			} {
				res := w.run(t, c.room, c.args[0], c.args[1:]...)
				if !served(store, c.endpoint) {
					require.Equal(t, exitFailure, res.code, "%s: %v", store, c.args)
					require.Contains(t, res.stderr, "HTTP 404: M_UNRECOGNIZED", "%s: %v", store, c.args)
					continue
				}
				require.Equal(t, exitOK, res.code, "%s: %v: %s", store, c.args, res.stderr)
				outputs[store][c.endpoint] = res.stdout
			}
		}
		require.Len(t, outputs["memory"], 5)
		for endpoint, out := range outputs["sqlite"] {
			require.Equal(t, outputs["memory"][endpoint], out, endpoint)
		}
	}

	// The log is read once serve has exited: its stderr is copied apart
	// from its stdout, and only Wait makes sure all of it has arrived.
	for store, w := range worlds {
		require.Equal(t, exitOK, w.server.stop(t), store)
		stderr := w.server.stderr.String()
		logged := regexp.MustCompile(`msg="serving endpoints" endpoints="([^"]*)"`).FindStringSubmatch(stderr)
		require.NotNil(t, logged, "%s: %s", store, stderr)
		require.Equal(t, strings.Join(want[store], ", "), logged[1], store)
		require.Equal(t, 1, strings.Count(stderr, `msg="serving endpoints"`), "one line")
	}
}
