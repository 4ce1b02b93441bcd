package memstore

import (
	"fmt"

	"github.com/fedhistory/fedhistory/internal/stateres"
	"github.com/matrix-org/gomatrixserverlib"
)

// resolveStates merges two or more distinct room states with the state
// resolution algorithm of the room version (package stateres, which every
// fedhistory store shares), and returns the result as a statemap that shares
// as much as it can with states[0].
//
// lookup returns the record of an event ID, or nil: the resolution may pick
// an event of the states' auth chains that is in none of the states, and
// stateres knows events only as *stateres.Event. Records are immutable, so
// resolveStates needs no lock beyond whatever lookup takes.
func resolveStates(version gomatrixserverlib.RoomVersion, states []statemap, lookup func(eventID string) *record) (statemap, error) {
	sets := make([]stateres.State, len(states))
	for i, state := range states {
		set := make(stateres.State, state.Len())
		state.All(func(key stateKey, rec *record) bool {
			set[key] = &rec.state.event
			return true
		})
		sets[i] = set
	}
	resolved, err := stateres.Resolve(version, sets)
	if err != nil {
		return statemap{}, err
	}

	// Edit states[0] into the result rather than building it afresh, so that
	// the merged state shares every unchanged subtree with one branch.
	result := states[0]
	var gone []stateKey
	result.All(func(key stateKey, _ *record) bool {
		if _, keep := resolved[key]; !keep {
			gone = append(gone, key)
		}
		return true
	})
	for _, key := range gone {
		result = result.Delete(key)
	}
	for key, ev := range resolved {
		if current, ok := result.Get(key); ok && &current.state.event == ev {
			continue
		}
		rec := lookup(ev.ID)
		if rec == nil || rec.state == nil || &rec.state.event != ev {
			return statemap{}, fmt.Errorf("state resolution returned unknown event %s", ev.ID)
		}
		result = result.Set(key, rec)
	}
	return result, nil
}
