package roomdump

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// Writer writes a dump, one line per call. Each line goes to the underlying
// writer in a single Write, so there is nothing to flush.
//
// Writer checks what is cheap to check (a stable room version, a JSON
// object, a valid user ID, the line length); it leaves the full validation
// of events, and the order of lines, to Read.
type Writer struct {
	w   io.Writer
	buf []byte
}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// WriteEvent writes an event line, with opts as its "rejected", "outlier"
// and "state_before" (written when not nil, so [] for the empty state).
// The PDU is compacted onto one line; strings and numbers are kept byte for
// byte.
func (w *Writer) WriteEvent(roomVersion string, pdu json.RawMessage, opts fedhistory.AddOptions) error {
	if !gomatrixserverlib.StableRoomVersion(gomatrixserverlib.RoomVersion(roomVersion)) {
		return fmt.Errorf("roomdump: writing event: %w: %q", ErrUnknownRoomVersion, roomVersion)
	}
	event, err := compactObject(pdu)
	if err != nil {
		return fmt.Errorf("roomdump: writing event: %w: %v", ErrBadEvent, err)
	}
	version, err := json.Marshal(roomVersion)
	if err != nil {
		return err
	}
	w.buf = append(w.buf[:0], `{"room_version":`...)
	w.buf = append(w.buf, version...)
	w.buf = append(w.buf, `,"event":`...)
	w.buf = append(w.buf, event...)
	if opts.Rejected {
		w.buf = append(w.buf, `,"rejected":true`...)
	}
	if opts.Outlier {
		w.buf = append(w.buf, `,"outlier":true`...)
	}
	if opts.StateBefore != nil {
		ids, err := json.Marshal(opts.StateBefore)
		if err != nil {
			return err
		}
		w.buf = append(w.buf, `,"state_before":`...)
		w.buf = append(w.buf, ids...)
	}
	w.buf = append(w.buf, "}\n"...)
	return w.flushLine()
}

// WriteErasedUser writes a line marking userID as erased.
func (w *Writer) WriteErasedUser(userID string) error {
	if _, err := spec.NewUserID(userID, true); err != nil {
		return fmt.Errorf("roomdump: writing erased user %q: %w", userID, err)
	}
	user, err := json.Marshal(userID)
	if err != nil {
		return err
	}
	w.buf = append(w.buf[:0], `{"erased_user":`...)
	w.buf = append(w.buf, user...)
	w.buf = append(w.buf, "}\n"...)
	return w.flushLine()
}

// WriteRecord writes rec as WriteEvent or WriteErasedUser would.
func (w *Writer) WriteRecord(rec Record) error {
	if rec.ErasedUser != "" {
		return w.WriteErasedUser(rec.ErasedUser)
	}
	return w.WriteEvent(rec.RoomVersion, rec.Event, rec.Options())
}

func (w *Writer) flushLine() error {
	if len(w.buf) > MaxLineBytes {
		return fmt.Errorf("roomdump: %w (%d bytes)", ErrLineTooLong, len(w.buf))
	}
	if _, err := w.w.Write(w.buf); err != nil {
		return fmt.Errorf("roomdump: writing line: %w", err)
	}
	return nil
}

// WriteRoom writes every event of a generated room, in its order.
func WriteRoom(w io.Writer, room *roomgen.Room) error {
	dw := NewWriter(w)
	for _, ev := range room.Events {
		if err := dw.WriteEvent(room.Version, ev.JSON, fedhistory.AddOptions{Rejected: ev.Rejected, Outlier: ev.Outlier}); err != nil {
			return fmt.Errorf("event %s: %w", ev.ID, err)
		}
	}
	return nil
}
