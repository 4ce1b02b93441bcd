package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"

	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// roomLandmarks are the IDs a user needs to start asking for a room's
// history: the room, its create event (where every backfill ends) and its
// newest event (where a first backfill starts).
type roomLandmarks struct {
	RoomID string
	// CreateEvent is empty when the events seen did not include the
	// room's m.room.create (a dump may start mid-history).
	CreateEvent string
	// LatestEvent is the last event in topological order that is neither
	// rejected nor an outlier: the events after it, if any, are not served.
	LatestEvent string
	// Events counts every event of the room seen.
	Events int
}

// logAttrs are the landmarks as log attributes.
func (l *roomLandmarks) logAttrs() []any {
	return []any{
		slog.String("room_id", l.RoomID),
		slog.String("create_event", orNone(l.CreateEvent)),
		slog.String("latest_event", orNone(l.LatestEvent)),
		slog.Int("events", l.Events),
	}
}

// print writes the landmarks as NAME=VALUE lines, for a person to read and
// a script to pick from.
func (l *roomLandmarks) print(w io.Writer) {
	fmt.Fprintf(w, "room_id=%s\ncreate_event=%s\nlatest_event=%s\n", l.RoomID, orNone(l.CreateEvent), orNone(l.LatestEvent))
}

func orNone(id string) string {
	if id == "" {
		return "none"
	}
	return id
}

// landmarkFinder collects the landmarks of the rooms of a stream of events
// in topological order, in the order the rooms first appear.
type landmarkFinder struct {
	rooms  []*roomLandmarks
	byRoom map[string]*roomLandmarks
}

// add notes one event. Only events of a room whose create event has not been
// seen are parsed.
func (f *landmarkFinder) add(roomID, eventID string, pdu json.RawMessage, rejected, outlier bool) {
	room := f.byRoom[roomID]
	if room == nil {
		if f.byRoom == nil {
			f.byRoom = make(map[string]*roomLandmarks)
		}
		room = &roomLandmarks{RoomID: roomID}
		f.byRoom[roomID] = room
		f.rooms = append(f.rooms, room)
	}
	room.Events++
	if !rejected && !outlier {
		room.LatestEvent = eventID
	}
	if room.CreateEvent == "" && !rejected {
		var fields struct {
			Type     string  `json:"type"`
			StateKey *string `json:"state_key"`
		}
		if json.Unmarshal(pdu, &fields) == nil && fields.Type == "m.room.create" && fields.StateKey != nil && *fields.StateKey == "" {
			room.CreateEvent = eventID
		}
	}
}

// generatedLandmarks returns the landmarks of a generated room.
func generatedLandmarks(room *roomgen.Room) *roomLandmarks {
	var f landmarkFinder
	for _, ev := range room.Events {
		f.add(room.ID, ev.ID, ev.JSON, ev.Rejected, ev.Outlier)
	}
	if len(f.rooms) == 0 {
		return &roomLandmarks{RoomID: room.ID}
	}
	return f.rooms[0]
}
