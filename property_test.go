package fedhistory_test

import (
	"encoding/json"
	"maps"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/redact"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// oracleState is the visibility-relevant state the property test tracks
// itself while it builds a room, independently of any store.
type oracleState struct {
	hv      string
	members map[string]string // user ID → membership
}

func (s oracleState) with(userID, membership string) oracleState {
	next := oracleState{hv: s.hv, members: maps.Clone(s.members)}
	next.members[userID] = membership
	return next
}

// visibleTo restates the spec's server behaviour for one server: any user
// of the server may see the event.
func (s oracleState) visibleTo(server string) bool {
	anyWith := func(memberships ...string) bool {
		for user, m := range s.members {
			if strings.HasSuffix(user, ":"+server) && strings.Count(user[:len(user)-len(server)-1], ":") == 0 {
				for _, want := range memberships {
					if m == want {
						return true
					}
				}
			}
		}
		return false
	}
	switch s.hv {
	case "joined":
		return anyWith("join")
	case "invited":
		return anyWith("join", "invite")
	default: // world_readable, shared, unset: the origin is joined now
		return true
	}
}

type oracleEvent struct {
	before, after oracleState
	kind          string // "message", "hv", "member:<user>"
}

// TestPropertyNothingLeaks builds random rooms — random joins, invites and
// leaves of users on two servers (one with a port), random history
// visibility changes, forks whose branches carry messages — and checks that
// every event a backfill returns is served whole exactly when the spec's
// rules let the origin see it, redacted otherwise, and that no event of
// another room is ever returned.
func TestPropertyNothingLeaks(t *testing.T) {
	servers := []string{"hs2.example", "hs3.example:8448"}
	users := []string{"@u1:hs2.example", "@u2:hs2.example", "@v:hs3.example:8448"}
	hvValues := []string{"world_readable", "shared", "invited", "joined", "somethingnew"}
	alice := "@alice:" + ourServer

	counts := map[string]int{}
	for seed := int64(1); seed <= 12; seed++ {
		rng := rand.New(rand.NewPCG(uint64(seed), 42))
		b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: []string{"10", "11", "6"}[seed%3], ServerName: ourServer, Seed: seed})
		require.NoError(t, err)
		require.NoError(t, b.StandardSetup())
		state := oracleState{hv: "shared", members: map[string]string{alice: "join"}}
		oracle := map[string]oracleEvent{}
		record := func(ev roomgen.Event, err error, before, after oracleState, kind string) {
			require.NoError(t, err)
			oracle[ev.ID] = oracleEvent{before: before, after: after, kind: kind}
		}

		for step := 0; step < 60; step++ {
			switch r := rng.IntN(10); {
			case r < 4:
				ev, err := b.Message(alice, "msg")
				record(ev, err, state, state, "message")
			case r < 7:
				user := users[rng.IntN(len(users))]
				var membership, sender string
				switch state.members[user] {
				case "join":
					membership, sender = "leave", user
				case "invite":
					membership, sender = []string{"join", "leave"}[rng.IntN(2)], user
				default:
					membership, sender = []string{"join", "invite"}[rng.IntN(2)], user
					if membership == "invite" {
						sender = alice
					}
				}
				after := state.with(user, membership)
				ev, err := b.Member(sender, user, membership)
				record(ev, err, state, after, "member:"+user)
				state = after
			case r < 8:
				after := oracleState{hv: hvValues[rng.IntN(len(hvValues))], members: state.members}
				ev, err := b.HistoryVisibility(alice, after.hv)
				record(ev, err, state, after, "hv")
				state = after
			default:
				// A fork whose two branches carry only messages, then a merge:
				// the state at every event of it is the state at the fork.
				other := b.Fork()
				for i := rng.IntN(3); i >= 0; i-- {
					ev, err := b.Message(alice, "left")
					record(ev, err, state, state, "message")
				}
				require.NoError(t, b.Branch(other))
				for i := rng.IntN(3); i >= 0; i-- {
					ev, err := b.Message(alice, "right")
					record(ev, err, state, state, "message")
				}
				require.NoError(t, b.Merge())
			}
		}
		ev, err := b.Message(alice, "head")
		record(ev, err, state, state, "message")

		room := &testRoom{id: b.RoomID(), version: b.Room().Version, b: b, ids: map[string]string{}}
		other := newTestRoom(t, "10", 1000+seed)
		store := load(t, room, other)
		h := newHandler(t, store)

		for _, server := range servers {
			resp := do(t, h, http.MethodGet, backfillURL(room.id, "100", ev.ID), server, "")
			if !state.visibleToJoined(server) {
				require.Equal(t, http.StatusForbidden, resp.status, "seed %d: %s is not in the room", seed, server)
				counts["forbidden"]++
				continue
			}
			require.Equal(t, http.StatusOK, resp.status, "seed %d body: %s", seed, resp.body)
			var pdus []json.RawMessage
			require.NoError(t, json.Unmarshal(resp.json(t)["pdus"], &pdus))
			require.NotEmpty(t, pdus)
			for _, pdu := range pdus {
				var fields struct {
					RoomID string `json:"room_id"`
				}
				require.NoError(t, json.Unmarshal(pdu, &fields))
				require.Equal(t, room.id, fields.RoomID, "an event of another room leaked")
				id := idOfPDU(t, room.version, pdu)
				want, tracked := oracle[id]
				if !tracked {
					continue // a setup event: shared history, always visible
				}
				visible := want.before.visibleTo(server)
				isOwnMember := strings.HasPrefix(want.kind, "member:") && strings.HasSuffix(want.kind, ":"+server)
				if want.kind == "hv" || isOwnMember {
					visible = visible || want.after.visibleTo(server)
				}
				evs, err := store.Events(t.Context(), room.id, []string{id})
				require.NoError(t, err)
				redacted, err := redact.Event(room.version, evs[0].JSON)
				require.NoError(t, err)
				if string(redacted) == string(evs[0].JSON) {
					counts["indistinguishable"]++ // redaction removes nothing
					require.Equal(t, string(redacted), string(pdu))
					continue
				}
				served := string(pdu) == string(evs[0].JSON)
				counts[map[bool]string{true: "whole", false: "redacted"}[served]]++
				require.Equal(t, visible, served, "seed %d, %s, event %s (%s): served whole=%v, spec says visible=%v",
					seed, server, id, want.kind, served, visible)
				if !served {
					require.Equal(t, string(redacted), string(pdu), "an invisible event is served in its redacted form")
				}
			}
		}
	}
	// The random rooms must exercise every outcome, or the test proves little.
	t.Logf("outcomes: %v", counts)
	require.Positive(t, counts["whole"])
	require.Positive(t, counts["redacted"])
	require.Positive(t, counts["forbidden"])
}

// visibleToJoined reports whether server has a joined user in the state.
func (s oracleState) visibleToJoined(server string) bool {
	for user, m := range s.members {
		if m == "join" && strings.HasSuffix(user, ":"+server) && strings.Count(user[:len(user)-len(server)-1], ":") == 0 {
			return true
		}
	}
	return false
}
