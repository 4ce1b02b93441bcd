// Package roomdump reads and writes room dumps: JSON Lines files of PDUs
// that a store can be loaded from (tests, benchmarks, the demo).
//
// # Format
//
// A dump is UTF-8 text, one JSON object per line, in topological order. An
// event line is
//
//	{"room_version": "10", "event": {…PDU…}}
//
// with the PDU in the federation format of the room version, and optionally
// "rejected": true (the event failed authorisation), "outlier": true (its
// place in the DAG is unknown) and
//
//	"state_before": ["$id", …]
//
// the room state just before the event, as the homeserver learnt it (see
// fedhistory.AddOptions.StateBefore): the IDs of state events on earlier
// lines of the same room, none of them rejected, at most one per (type,
// state_key); [] is the empty state. It is how a dump of a room joined over
// federation, or one with gaps, says what the state was where a store could
// not derive it; an outlier takes none. A line
//
//	{"erased_user": "@u:server"}
//
// marks a user as erased (their events are served redacted). No other keys
// are allowed, so a typo is an error rather than a silently lost flag.
//
// Several rooms may share a file; each room's lines must agree on its
// version. Lines holding only whitespace are skipped, so hand-edited dumps
// may be spaced out; a final newline is optional. A line may hold at most
// MaxLineBytes bytes.
//
// Events must come in topological order: no event may refer (prev_events or
// auth_events) to an event on a later line, or to an event of another room.
// References to events absent from the file are allowed, because dumps taken
// from real servers start mid-history; but every event state_before names
// must be in the file, on an earlier line, since a store checks it is there.
//
// Read checks the structure of every event (it parses it as untrusted input
// of its room version: event ID, room ID, field formats, size) but not its
// signatures: a dump is data we chose to load, and tests need to load events
// whose signatures are deliberately wrong.
package roomdump

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/redact"
	"github.com/fedhistory/fedhistory/internal/shares"
)

// MaxLineBytes bounds a line, newline included. A PDU is at most 65536
// bytes in canonical JSON (spec: server-server-api, "Size limits"); a dump
// need not be canonical, and escaping every character as \uXXXX inflates a PDU at most
// six-fold, so 1 MiB holds any legal event with room to spare, while a
// longer line can only be garbage, which we refuse before buffering it.
const MaxLineBytes = 1 << 20

// MaxPDUBytes is the spec's limit on a PDU, in canonical JSON.
const MaxPDUBytes = 65536

// Errors a LineError wraps, for errors.Is.
var (
	ErrLineTooLong         = errors.New("line longer than MaxLineBytes")
	ErrBadRecord           = errors.New("malformed record")
	ErrUnknownRoomVersion  = errors.New("not a known stable room version")
	ErrBadEvent            = errors.New("invalid event")
	ErrRoomVersionMismatch = errors.New("room version differs from an earlier line of the same room")
	ErrDuplicateEvent      = errors.New("event appears twice")
	ErrForwardReference    = errors.New("event refers to an event on a later line")
	ErrOtherRoomReference  = errors.New("event refers to an event of another room")
	ErrEventIDMismatch     = errors.New("store computed another event ID")
	ErrBadStateBefore      = errors.New("invalid state_before")
)

// LineError reports a bad line of a dump.
type LineError struct {
	Line int // 1-based
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("roomdump: line %d: %v", e.Line, e.Err) }

func (e *LineError) Unwrap() error { return e.Err }

// Options returns the fedhistory.AddOptions to add rec's event with.
func (rec Record) Options() fedhistory.AddOptions {
	return fedhistory.AddOptions{Rejected: rec.Rejected, Outlier: rec.Outlier, StateBefore: slices.Clone(rec.StateBefore)}
}

// Record is one line of a dump: an event (RoomVersion, Event, the flags and
// StateBefore) or an erased user (ErasedUser).
type Record struct {
	RoomVersion string
	// Event is the PDU, compacted (insignificant whitespace removed).
	Event             json.RawMessage
	Rejected, Outlier bool
	// StateBefore is the line's "state_before": nil when it has none, empty
	// for the empty state.
	StateBefore []string
	ErasedUser  string

	// EventID and RoomID are derived from Event by Read; Writer ignores
	// them.
	EventID, RoomID string
}

// Read parses and validates a whole dump. It returns the first bad line as
// a *LineError, and no records then.
func Read(r io.Reader) ([]Record, error) {
	var records []Record
	err := scan(r, func(rec Record, _ int) bool {
		records = append(records, rec)
		return true
	})
	if err != nil {
		return nil, err
	}
	return records, nil
}

// Records reads the dump r holds as it yields its records, in order, so
// that a dump is read keeping only what the checks across lines need of
// each event (about a hundred bytes), not the events: it is how fedhistory
// import streams a dump into a database.
//
// A record is yielded once its line has passed every check that needs only
// the lines before it. A reference can only be told to be to a later line
// (ErrForwardReference) once that line is read, so the sequence can end with
// an error about a line whose record it has yielded: what a consumer did
// with the records must then be undone, as a transaction is rolled back.
// Once such an error is certain, no more records are yielded, but the dump
// is still read to its end, because the error Records ends with is always
// the one Read returns: a line that does not parse, or repeats an event,
// wins over an error of references, wherever it is. A good dump yields every
// record Read returns and no error.
func Records(r io.Reader) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		err := scan(r, func(rec Record, _ int) bool { return yield(rec, nil) })
		if err != nil && !errors.Is(err, errStopped) {
			yield(Record{}, err)
		}
	}
}

// Load reads the whole dump, and only when every line is good calls add
// for each record in order: a bad dump adds nothing. An error from add
// stops the load and is returned with the line number.
func Load(r io.Reader, add func(Record) error) error {
	var (
		records []Record
		lines   []int
	)
	err := scan(r, func(rec Record, line int) bool {
		records = append(records, rec)
		lines = append(lines, line)
		return true
	})
	if err != nil {
		return err
	}
	for i, rec := range records {
		if err := add(rec); err != nil {
			return fmt.Errorf("roomdump: line %d: adding record: %w", lines[i], err)
		}
	}
	return nil
}

// Store is a store that a dump loads into, such as *memstore.Store.
type Store interface {
	Add(roomVersion string, pdu []byte, opts fedhistory.AddOptions) (eventID string, err error)
	EraseUser(userID string)
}

// LoadInto loads a dump into a store, as Load does, and checks that the
// store computed the same event ID as Read for every event.
func LoadInto(r io.Reader, store Store) error {
	return Load(r, func(rec Record) error {
		if rec.ErasedUser != "" {
			store.EraseUser(rec.ErasedUser)
			return nil
		}
		id, err := store.Add(rec.RoomVersion, rec.Event, rec.Options())
		if err != nil {
			return err
		}
		if id != rec.EventID {
			return fmt.Errorf("%w: %s, want %s", ErrEventIDMismatch, id, rec.EventID)
		}
		return nil
	})
}

// eventPosition is where an event appears in the dump, and what
// state_before needs to know of it.
type eventPosition struct {
	line     int
	roomID   string
	rejected bool
	// stateKey is the event's (type, state_key), nil for a non-state event.
	stateKey *[2]string
}

// parsedEvent is what the reference checks need of an event line.
type parsedEvent struct {
	line        int
	roomID      string
	refs        []string // prev_events, then auth_events
	stateBefore []string
}

// errStopped is scan's error when its consumer stopped it.
var errStopped = errors.New("roomdump: stopped by the consumer")

// blockLines is how many lines scan parses at once, on every core: enough
// to keep both of this machine's cores busy (parseLines gives each at least
// 256), few enough that a block holds a few MiB. Tests lower it to cross
// blocks everywhere.
var blockLines = 4096

// scan reads and checks the dump r holds, calling yield with each record
// and its line number as described for Records, and returns the error Read
// would (errStopped when yield returned false).
func scan(r io.Reader, yield func(Record, int) bool) error {
	scanner := bufio.NewScanner(r)
	scanner.Buffer(make([]byte, 0, 64*1024), MaxLineBytes)
	var (
		c     = checker{positions: map[string]eventPosition{}, rooms: map[string]*roomFacts{}}
		texts [][]byte
		lines []int
		line  int
	)
	// check parses the lines read so far and checks them in order, so
	// that the error is the first bad line's.
	check := func() error {
		for i, p := range parseLines(texts) {
			if err := c.check(lines[i], p); err != nil {
				return err
			}
			if c.crossErr == nil && !yield(p.rec, lines[i]) {
				return errStopped
			}
		}
		texts, lines = texts[:0], lines[:0]
		return nil
	}
	for scanner.Scan() {
		line++
		text := bytes.TrimSpace(scanner.Bytes())
		if len(text) == 0 {
			continue
		}
		texts = append(texts, bytes.Clone(text))
		lines = append(lines, line)
		if len(texts) == blockLines {
			if err := check(); err != nil {
				return err
			}
		}
	}
	if err := check(); err != nil {
		return err
	}
	// A line the scanner could not read comes after every line's own
	// checks, and before the checks of references.
	if err := scanner.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return &LineError{Line: line + 1, Err: ErrLineTooLong}
		}
		return fmt.Errorf("roomdump: reading line %d: %w", line+1, err)
	}
	return c.finish()
}

// roomFacts is what the checks keep of a room: its ID, one string that
// every position of the room shares (a dump's positions are most of what
// Records keeps), and its version.
type roomFacts struct {
	id, version string
}

// checker does the checks across lines, line by line in order.
type checker struct {
	positions map[string]eventPosition
	rooms     map[string]*roomFacts
	// deferred are the events with a reference to an event not seen when
	// their line was checked: to a later line (an error) or outside the
	// file (allowed), which only the end of the dump tells apart.
	deferred []parsedEvent
	// crossErr is the first error of references found among the other
	// events; it is final only at the end, since a deferred event's error
	// may come first, and any line's own error wins over it.
	crossErr *LineError
}

// check checks one line against the lines before it, returning an error
// that ends the dump: the line's own (it does not parse, its room's version
// differs, its event repeats one). An error of references is kept for
// finish.
func (c *checker) check(line int, p parsedLine) error {
	rec, facts := p.rec, p.facts
	if p.err != nil {
		return &LineError{Line: line, Err: p.err}
	}
	if rec.ErasedUser != "" {
		return nil
	}
	room, ok := c.rooms[rec.RoomID]
	if !ok {
		room = &roomFacts{id: rec.RoomID, version: rec.RoomVersion}
		c.rooms[rec.RoomID] = room
	}
	if room.version != rec.RoomVersion {
		return &LineError{Line: line, Err: fmt.Errorf("%w: room %s is version %q, this line says %q", ErrRoomVersionMismatch, rec.RoomID, room.version, rec.RoomVersion)}
	}
	if earlier, dup := c.positions[rec.EventID]; dup {
		return &LineError{Line: line, Err: fmt.Errorf("%w: %s, first on line %d", ErrDuplicateEvent, rec.EventID, earlier.line)}
	}
	c.positions[rec.EventID] = eventPosition{line: line, roomID: room.id, rejected: rec.Rejected, stateKey: facts.stateKey}
	ev := parsedEvent{line: line, roomID: room.id, refs: facts.refs, stateBefore: rec.StateBefore}
	// The positions of the events named are all known, and never change,
	// so the checks give now what they would at the end.
	if !c.allSeen(ev) {
		c.deferred = append(c.deferred, ev)
		return nil
	}
	if err := checkReferences(ev, c.positions); err != nil && c.crossErr == nil {
		c.crossErr = err
	}
	return nil
}

// allSeen reports whether every event ev names is on a line checked
// already.
func (c *checker) allSeen(ev parsedEvent) bool {
	for _, ids := range [][]string{ev.refs, ev.stateBefore} {
		for _, id := range ids {
			if _, ok := c.positions[id]; !ok {
				return false
			}
		}
	}
	return true
}

// finish returns the first error of references, in line order, now that
// every event ID is known.
func (c *checker) finish() error {
	for _, ev := range c.deferred {
		if c.crossErr != nil && c.crossErr.Line < ev.line {
			break
		}
		if err := checkReferences(ev, c.positions); err != nil {
			return err
		}
	}
	if c.crossErr != nil {
		return c.crossErr
	}
	return nil
}

// checkReferences checks what ev names against the events' positions: a
// reference to an event of the dump must be to an earlier line of the same
// room (one outside the dump is allowed), and state_before must be good
// (checkStateBefore).
func checkReferences(ev parsedEvent, positions map[string]eventPosition) *LineError {
	for _, ref := range ev.refs {
		pos, ok := positions[ref]
		if !ok {
			continue
		}
		if pos.line >= ev.line {
			return &LineError{Line: ev.line, Err: fmt.Errorf("%w: %s is on line %d", ErrForwardReference, ref, pos.line)}
		}
		if pos.roomID != ev.roomID {
			return &LineError{Line: ev.line, Err: fmt.Errorf("%w: %s is in %s", ErrOtherRoomReference, ref, pos.roomID)}
		}
	}
	if err := checkStateBefore(ev, positions); err != nil {
		return &LineError{Line: ev.line, Err: err}
	}
	return nil
}

// checkStateBefore checks the state_before of ev as a store checks
// AddOptions.StateBefore (see fedhistory.ErrInvalidStateBefore), so that a
// good dump loads whole: every ID an earlier line's event of the same room,
// a state event, not rejected, at most one per (type, state_key).
func checkStateBefore(ev parsedEvent, positions map[string]eventPosition) error {
	keys := make(map[[2]string]string, len(ev.stateBefore))
	for _, id := range ev.stateBefore {
		pos, ok := positions[id]
		switch {
		case !ok:
			return fmt.Errorf("%w: %s is not in the dump", ErrBadStateBefore, id)
		case pos.line >= ev.line:
			return fmt.Errorf("%w: state_before names %s, on line %d", ErrForwardReference, id, pos.line)
		case pos.roomID != ev.roomID:
			return fmt.Errorf("%w: state_before names %s, in %s", ErrOtherRoomReference, id, pos.roomID)
		case pos.stateKey == nil:
			return fmt.Errorf("%w: %s is not a state event", ErrBadStateBefore, id)
		case pos.rejected:
			return fmt.Errorf("%w: %s is rejected", ErrBadStateBefore, id)
		}
		if other, dup := keys[*pos.stateKey]; dup {
			return fmt.Errorf("%w: %s and %s are both the state %q %q", ErrBadStateBefore, other, id, pos.stateKey[0], pos.stateKey[1])
		}
		keys[*pos.stateKey] = id
	}
	return nil
}

// parsedLine is parseLine's result for one line.
type parsedLine struct {
	rec   Record
	facts lineFacts
	err   error
}

// parseLines parses texts on every core: gomatrixserverlib's parse of an
// event, which hashes it for its ID and checks its content hash, is most of
// the time a dump takes to read (about 75 µs per event here), and lines
// parse independently.
func parseLines(texts [][]byte) []parsedLine {
	parsed := make([]parsedLine, len(texts))
	shares.Run(len(texts), 256, func(_, lo, hi int) {
		for i := lo; i < hi; i++ {
			p := &parsed[i]
			p.rec, p.facts, p.err = parseLine(texts[i])
			if p.err != nil {
				// The lines after it will not be looked at.
				return
			}
		}
	})
	return parsed
}

// lineFacts is what the checks across lines need of an event line.
type lineFacts struct {
	refs     []string // prev_events, then auth_events
	stateKey *[2]string
}

// parseLine parses one non-blank line, returning the record and, for an
// event, the facts the checks across lines need.
func parseLine(text []byte) (Record, lineFacts, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(text, &fields); err != nil {
		return Record{}, lineFacts{}, fmt.Errorf("%w: %v", ErrBadRecord, err)
	}
	if fields == nil {
		return Record{}, lineFacts{}, fmt.Errorf("%w: not a JSON object", ErrBadRecord)
	}
	var rec Record
	for key, value := range fields {
		var err error
		switch key {
		case "room_version":
			err = json.Unmarshal(value, &rec.RoomVersion)
		case "event":
			rec.Event = value
		case "rejected":
			err = json.Unmarshal(value, &rec.Rejected)
		case "outlier":
			err = json.Unmarshal(value, &rec.Outlier)
		case "state_before":
			// null would read as "none", which leaving the key out says.
			if err = json.Unmarshal(value, &rec.StateBefore); err == nil && rec.StateBefore == nil {
				err = errors.New("not an array")
			}
		case "erased_user":
			err = json.Unmarshal(value, &rec.ErasedUser)
		default:
			err = errors.New("unknown key")
		}
		if err != nil {
			return Record{}, lineFacts{}, fmt.Errorf("%w: %q: %v", ErrBadRecord, key, err)
		}
	}

	_, hasEvent := fields["event"]
	_, hasErased := fields["erased_user"]
	switch {
	case hasEvent && hasErased:
		return Record{}, lineFacts{}, fmt.Errorf("%w: both \"event\" and \"erased_user\"", ErrBadRecord)
	case hasErased:
		if len(fields) != 1 {
			return Record{}, lineFacts{}, fmt.Errorf("%w: an \"erased_user\" line has no other keys", ErrBadRecord)
		}
		if _, err := spec.NewUserID(rec.ErasedUser, true); err != nil {
			return Record{}, lineFacts{}, fmt.Errorf("%w: erased_user %q: %v", ErrBadRecord, rec.ErasedUser, err)
		}
		return rec, lineFacts{}, nil
	case !hasEvent:
		return Record{}, lineFacts{}, fmt.Errorf("%w: neither \"event\" nor \"erased_user\"", ErrBadRecord)
	}

	if _, ok := fields["room_version"]; !ok {
		return Record{}, lineFacts{}, fmt.Errorf("%w: an event line needs \"room_version\"", ErrBadRecord)
	}
	if !gomatrixserverlib.StableRoomVersion(gomatrixserverlib.RoomVersion(rec.RoomVersion)) {
		return Record{}, lineFacts{}, fmt.Errorf("%w: %q", ErrUnknownRoomVersion, rec.RoomVersion)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(rec.RoomVersion))
	if err != nil {
		return Record{}, lineFacts{}, fmt.Errorf("%w: %v", ErrUnknownRoomVersion, err)
	}
	// The line parsed, so the event is valid JSON: one that is a compact
	// object already, as dumps usually are, is kept as it is (json.Compact's
	// scan took 7% of the time a dump took to read).
	if len(rec.Event) == 0 || rec.Event[0] != '{' || !isCompact(rec.Event) {
		if rec.Event, err = compactObject(rec.Event); err != nil {
			return Record{}, lineFacts{}, fmt.Errorf("%w: %v", ErrBadEvent, err)
		}
	}
	// The size limit applies to the event as received, in canonical JSON
	// (spec: server-server-api, "Size limits"). gomatrixserverlib checks it
	// too, but after redacting an event whose content hash does not match,
	// so the original could pass at any size.
	canonical, err := gomatrixserverlib.CanonicalJSON(rec.Event)
	if err != nil {
		return Record{}, lineFacts{}, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	if len(canonical) > MaxPDUBytes {
		return Record{}, lineFacts{}, fmt.Errorf("%w: %d bytes in canonical JSON, more than %d", ErrBadEvent, len(canonical), MaxPDUBytes)
	}
	pdu, err := verImpl.NewEventFromUntrustedJSON(rec.Event)
	if err != nil {
		return Record{}, lineFacts{}, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	if rec.Outlier && rec.StateBefore != nil {
		return Record{}, lineFacts{}, fmt.Errorf("%w: an outlier's state is unknown by definition", ErrBadStateBefore)
	}
	var facts lineFacts
	if rec.EventID, rec.RoomID, facts, err = eventFacts(verImpl, pdu, rec.Event); err != nil {
		return Record{}, lineFacts{}, fmt.Errorf("%w: %v", ErrBadEvent, err)
	}
	// Room versions 1 and 2 carry the event ID in the event, and
	// gomatrixserverlib does not insist that it is there.
	if _, server, err := gomatrixserverlib.SplitID('$', rec.EventID); verImpl.EventIDFormat() == gomatrixserverlib.EventIDFormatV1 && (err != nil || server == "") {
		return Record{}, lineFacts{}, fmt.Errorf("%w: event_id %q is not \"$opaque:server\"", ErrBadEvent, rec.EventID)
	}
	return rec, facts, nil
}

// eventFacts returns the ID of event (parsed as pdu), its room's ID, the
// events it refers to (prev_events, then auth_events) and its (type,
// state_key).
//
// gomatrixserverlib's accessors panic on some events that its untrusted
// parser accepts (RoomID on a room ID with an invalid server name, for
// one); a forged dump must give an error, not a crash.
func eventFacts(verImpl gomatrixserverlib.IRoomVersion, pdu gomatrixserverlib.PDU, event []byte) (eventID, roomID string, facts lineFacts, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	eventID = computeEventID(verImpl, pdu, event)
	roomID = pdu.RoomID().String()
	// From room version 12, AuthEventIDs includes the create event that the
	// room ID names: a reference like any other.
	facts.refs = append(facts.refs, pdu.PrevEventIDs()...)
	facts.refs = append(facts.refs, pdu.AuthEventIDs()...)
	if key := pdu.StateKey(); key != nil {
		facts.stateKey = &[2]string{pdu.Type(), *key}
	}
	return eventID, roomID, facts, nil
}

// computeEventID returns the ID of event, parsed as pdu: in room versions 1
// and 2 the one it carries, from version 3 its reference hash in unpadded
// base64, URL-safe from version 4 (spec: room versions 3 and 4, "Event
// IDs"). It is gomatrixserverlib's EventID, which the stores and memstore
// compute too, so it must never differ from it; but that decodes the event,
// redacts it and encodes it again: a third of the time a dump took to read
// (37 of 114 µs per event, BENCHMARKS.md "Round seven"). So for the events
// where the two provably agree, hashEventID computes it from the bytes.
func computeEventID(verImpl gomatrixserverlib.IRoomVersion, pdu gomatrixserverlib.PDU, event []byte) string {
	if id, ok := hashEventID(verImpl, event); ok {
		return id
	}
	return pdu.EventID()
}

// hashEventID hashes the canonical JSON of redact.Hashable's output, a few
// hundred bytes, and reports false where gomatrixserverlib's EventID could
// hash something else (TestEventIDsAsGomatrixserverlib has a case of each):
//   - room versions 1 and 2 carry their IDs, and before version 6 numbers
//     need not be integers, which gomatrixserverlib respells;
//   - Hashable fails (a duplicate of a kept key, a top-level key that
//     matches a kept one only in case);
//   - what is hashed has no content (gomatrixserverlib adds "content": {}),
//     a number that is not a plain integer of canonical JSON's range (it
//     lets "5E1" and "0.0" through), a duplicate key (it keeps the last), a
//     third_party_invite (from version 11 it drops its signed) or bytes
//     that are not UTF-8 (it replaces them).
func hashEventID(verImpl gomatrixserverlib.IRoomVersion, event []byte) (string, bool) {
	// From room version 4 (so in all those of 6 and later) the ID is the
	// hash in URL-safe base64.
	if n, err := strconv.Atoi(string(verImpl.Version())); err != nil || n < 6 ||
		verImpl.EventIDFormat() != gomatrixserverlib.EventIDFormatV3 {
		return "", false
	}
	hashable, err := redact.Hashable(string(verImpl.Version()), event)
	if err != nil || !utf8.Valid(hashable) || !plainHashable(hashable) {
		return "", false
	}
	canonical, err := gomatrixserverlib.CanonicalJSON(hashable)
	if err != nil {
		return "", false
	}
	sum := sha256.Sum256(canonical)
	return "$" + base64.RawURLEncoding.EncodeToString(sum[:]), true
}

// plainHashable reports whether the valid JSON object b has a top-level
// "content", only plain integers of canonical JSON's range, no duplicate
// key in any object and no key third_party_invite (see hashEventID). It
// scans the bytes without decoding them, and says no where that cannot
// decide (a key with an escape, an object of more than maxPlainKeys keys,
// nesting deeper than maxPlainDepth, an integer of more than 15 digits):
// gomatrixserverlib then computes the ID. (A json.Decoder walk cost 10 µs
// per event, a tenth of an import's CPU.)
func plainHashable(b []byte) bool {
	type level struct {
		object  bool
		keys    [maxPlainKeys][]byte
		n       int
		wantKey bool
	}
	var (
		stack      [maxPlainDepth]level
		depth      = -1
		hasContent bool
	)
	for i := 0; i < len(b); {
		switch c := b[i]; {
		case c == '{' || c == '[':
			if depth++; depth == maxPlainDepth {
				return false
			}
			stack[depth] = level{object: c == '{', wantKey: c == '{'}
			i++
		case c == '}' || c == ']':
			depth--
			i++
		case c == ',':
			if stack[depth].object {
				stack[depth].wantKey = true
			}
			i++
		case c == '"': // b is an object: every string is inside one
			l := &stack[depth]
			j := i + 1
			for ; b[j] != '"'; j++ {
				if b[j] == '\\' {
					if l.wantKey {
						return false // an escaped key may equal another
					}
					j++
				}
			}
			if l.wantKey {
				key := b[i+1 : j]
				if string(key) == "third_party_invite" || l.n == maxPlainKeys {
					return false
				}
				for _, seen := range l.keys[:l.n] {
					if bytes.Equal(seen, key) {
						return false
					}
				}
				l.keys[l.n] = key
				l.n++
				l.wantKey = false
				hasContent = hasContent || (depth == 0 && string(key) == "content")
			}
			i = j + 1
		case c == '-' || ('0' <= c && c <= '9'):
			j := i
			for j < len(b) && strings.IndexByte("+-.eE0123456789", b[j]) >= 0 {
				j++
			}
			number := string(b[i:j])
			digits := strings.TrimPrefix(number, "-")
			if number == "-0" || len(digits) > 15 || strings.ContainsAny(digits, "+-.eE") {
				return false
			}
			i = j
		default: // whitespace, ':', true, false, null
			i++
		}
	}
	return hasContent
}

// plainHashable's bounds.
const (
	maxPlainKeys  = 16
	maxPlainDepth = 8
)

// compactObject checks that raw is a JSON object and removes insignificant
// whitespace, leaving strings and numbers byte for byte as they were.
func compactObject(raw json.RawMessage) (json.RawMessage, error) {
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, err
	}
	if buf.Len() == 0 || buf.Bytes()[0] != '{' {
		return nil, errors.New("not a JSON object")
	}
	return buf.Bytes(), nil
}

// isCompact reports whether b, valid JSON, has no whitespace outside its
// strings.
func isCompact(b []byte) bool {
	inString := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case inString && c == '\\':
			i++ // the escaped byte, which may be a quote
		case c == '"':
			inString = !inString
		case !inString && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			return false
		}
	}
	return true
}
