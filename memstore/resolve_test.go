package memstore

import (
	"testing"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/stateres"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"
)

// buildPowerConflict adds a room where alice (100) has given bob 50, and then
// concurrently alice demotes bob to 0 while bob lowers state_default. Bob's
// change is later and deeper, so any "latest wins" rule would pick it; the
// spec's resolution picks alice's: v2 sorts the higher-powered sender's power
// event first, after which bob's change fails auth, and v1 only lets a later
// power event replace an earlier one if it passes auth against it.
func buildPowerConflict(t *testing.T, version string) (*Store, *testRoom) {
	s := New()
	r := newTestRoom(t, version)
	r.addSetup(s)
	r.add(s, "bob", r.member(bob, bob, "join", names("msg1"), names("create", "pl", "jr")), fedhistory.AddOptions{})
	users := func(levels map[string]int) map[string]int {
		if r.verImpl.PrivilegedCreators() {
			delete(levels, alice)
		}
		return levels
	}
	powerLevels := func(bobsLevel, stateDefault int) map[string]any {
		return map[string]any{
			"users": users(map[string]int{alice: 100, bob: bobsLevel}), "users_default": 0,
			"events_default": 0, "state_default": stateDefault, "ban": 50, "kick": 50, "redact": 50, "invite": 0,
		}
	}
	r.add(s, "pl2", r.state(alice, spec.MRoomPowerLevels, powerLevels(50, 50), names("bob"), names("create", "pl", "alice")), fedhistory.AddOptions{})
	r.add(s, "plA", r.state(alice, spec.MRoomPowerLevels, powerLevels(0, 50), names("pl2"), names("create", "pl2", "alice")), fedhistory.AddOptions{})
	r.add(s, "msgB", r.message(bob, "hi", names("pl2"), names("create", "pl2", "bob")), fedhistory.AddOptions{})
	r.add(s, "plB", r.state(bob, spec.MRoomPowerLevels, powerLevels(50, 40), names("msgB"), names("create", "pl2", "bob")), fedhistory.AddOptions{})
	r.add(s, "merge", r.message(alice, "merged", names("plA", "plB"), names("create", "plA", "alice")), fedhistory.AddOptions{})
	return s, r
}

func TestStateResolutionPrefersTheMorePowerfulSender(t *testing.T) {
	for _, version := range testedVersions {
		t.Run("room v"+version, func(t *testing.T) {
			s, r := buildPowerConflict(t, version)
			merge := s.events.at(r.id("merge"))
			pl, ok := merge.before.Get(stateKey{Type: spec.MRoomPowerLevels})
			require.True(t, ok)
			require.Equal(t, r.id("plA"), pl.ID)
		})
	}
}

// TestMergeStateAgreesWithGomatrixserverlib checks the state that the store
// works out before a merge against gomatrixserverlib's state resolution of
// the merged branches, for the room versions where gomatrixserverlib's
// implementation works (its v2.1, room version 12, is why package stateres
// has its own).
func TestMergeStateAgreesWithGomatrixserverlib(t *testing.T) {
	builders := map[string]func(*testing.T, string) (*Store, *testRoom){
		"forked room":    buildForkedRoom,
		"power conflict": buildPowerConflict,
	}
	for name, build := range builders {
		for _, version := range []string{"1", "3", "10", "11"} {
			t.Run(name+" v"+version, func(t *testing.T) {
				s, r := build(t, version)
				merge := s.events.at(r.id("merge"))
				var stateSets [][]gomatrixserverlib.PDU
				known := make(map[string]gomatrixserverlib.PDU)
				var remember func(ev *stateres.Event)
				remember = func(ev *stateres.Event) {
					if _, ok := known[ev.ID]; ok {
						return
					}
					known[ev.ID] = ev.PDU
					for _, auth := range ev.Auth {
						remember(auth)
					}
				}
				for _, prevID := range merge.PrevEvents {
					var set []gomatrixserverlib.PDU
					s.events.at(prevID).after.All(func(_ stateKey, rec *record) bool {
						set = append(set, rec.state.event.PDU)
						remember(&rec.state.event)
						return true
					})
					stateSets = append(stateSets, set)
				}
				var authEvents []gomatrixserverlib.PDU
				for _, pdu := range known {
					authEvents = append(authEvents, pdu)
				}
				userIDForSender := func(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
					return spec.NewUserID(string(senderID), true)
				}
				theirs, err := gomatrixserverlib.ResolveConflictsNew(gomatrixserverlib.RoomVersion(version), stateSets, authEvents,
					userIDForSender, func(string) bool { return false })
				require.NoError(t, err)
				var theirIDs []string
				for _, pdu := range theirs {
					theirIDs = append(theirIDs, pdu.EventID())
				}

				var mergedIDs []string
				merge.before.All(func(_ stateKey, rec *record) bool {
					mergedIDs = append(mergedIDs, rec.ID)
					return true
				})
				require.ElementsMatch(t, theirIDs, mergedIDs, "the merge's state is the resolution")
			})
		}
	}
}
