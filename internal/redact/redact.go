// Package redact applies a room version's redaction algorithm to a stored
// PDU by removing keys from its bytes.
//
// A redacted copy is only useful to a receiver if it still verifies: the
// sender signed the canonical JSON of its own redacted copy, and the
// receiver redacts what it is given and checks that signature over the
// result (server-server API, "Validating hashes and signatures on received
// events"); for room versions 3 and later the event ID is a hash of the same
// redacted form. So the copy served must hold exactly the keys the algorithm
// keeps, with exactly the values the sender signed. Decoding the event and
// encoding it again cannot promise the second part: room versions 1 to 5
// allow integers beyond 2^53 and floats, which a decoder into float64 rounds
// or respells, and any re-encoding risks escaping strings differently. This
// package therefore never re-encodes: it finds the keys to remove with a
// small scanner and copies every byte it keeps from the input, values,
// escapes, whitespace and all. A receiver that canonicalises the output gets
// what it would have got from the original.
//
// The rules, per room version, are the spec's (content/rooms/ of the Matrix
// spec: fragments/v1-redactions.md, v6-redactions.md, v9-redactions.md,
// v11-redactions.md and the algorithm written out in v8.md); rules.go says
// which version uses which, and cites the text for each difference.
//
// The input comes from other servers. Event validates it with
// encoding/json.Valid (iterative; it refuses nesting deeper than 10000) and
// then only descends where the algorithm looks: the top level, content, and,
// for m.room.member events from room version 11, content.third_party_invite.
// The work is linear in the input and the stack is flat.
//
// Keys are compared by their decoded text, as a canonicalising receiver
// compares them: "typ\u0065" is the key "type". Duplicate keys in an object
// the algorithm inspects are handled so that no receiver can read the output
// differently from the input:
//   - a key the algorithm removes is removed wherever it occurs;
//   - a key the algorithm keeps, or reads (type, content, and
//     third_party_invite and its signed from room version 11), occurring
//     twice makes the event malformed (ErrMalformed): receivers disagree on
//     which occurrence wins, and the choice would decide what is kept;
//   - inside a kept value nothing is inspected: its bytes, duplicates and
//     all, are copied, so a receiver resolves them as it would in the
//     original event.
package redact

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ErrUnknownRoomVersion is returned for a room version this package has no
// redaction algorithm for.
var ErrUnknownRoomVersion = errors.New("redact: unknown room version")

// ErrMalformed is returned for input that is not a JSON object, is not valid
// JSON, or is not an event the algorithm can be applied to unambiguously (see
// Event).
var ErrMalformed = errors.New("redact: malformed event")

// Event returns event (one PDU in the federation format of roomVersion, as
// stored) with every key the room version's redaction algorithm removes,
// removed. Kept values are copied byte for byte, with the whitespace before
// each kept member and before each closing brace; the output is never longer
// than the input and redacting it again returns it unchanged.
//
// Beyond invalid JSON and a top level that is not an object, Event returns
// ErrMalformed (wrapped, with detail) when the event has no "type" or a
// "type" that is not a string, has a "content" that is not an object, or has
// a duplicate of a key that the algorithm keeps or reads in an object it
// inspects (see the package documentation). An event without "content" is
// redacted without one: Event only removes keys.
func Event(roomVersion string, event []byte) ([]byte, error) {
	return redactEvent(roomVersion, event, false)
}

// Hashable returns what the reference hash of event covers, before
// canonicalisation (server-server API, "Calculating the reference hash for
// an event": the event redacted, without "signatures" and "unsigned"): Event
// without the top-level "signatures", and without "event_id", which room
// versions 3 and later do not carry and which gomatrixserverlib removes from
// an event of those versions before hashing it (as the room dump reader's
// event IDs always have). The room dump reader hashes its canonical JSON
// for the ID of an event of room version 3 or later.
//
// Hashable also fails (ErrMalformed) on a top-level key that differs from a
// key gomatrixserverlib's redaction reads only in case ("Depth"):
// gomatrixserverlib decodes the top level into structs, whose fields
// encoding/json matches regardless of case, so it would hash such a key as
// the field; and on a top-level key that is not short ASCII, which Unicode
// folding may match to one too ("ſender"). The reader then leaves the ID to
// gomatrixserverlib.
func Hashable(roomVersion string, event []byte) ([]byte, error) {
	return redactEvent(roomVersion, event, true)
}

// gmslTopLevel are the top-level fields gomatrixserverlib's redaction
// decodes (its unredactableEventFieldsV1, a superset of V2's).
var gmslTopLevel = []string{
	"event_id", "type", "room_id", "sender", "state_key", "content", "hashes", "signatures",
	"depth", "prev_events", "prev_state", "auth_events", "origin", "origin_server_ts", "membership",
}

// hashOmits are the kept top-level keys that Hashable leaves out.
var hashOmits = []string{"signatures", "event_id"}

// redactEvent is Event, or Hashable when hashing.
func redactEvent(roomVersion string, event []byte, hashing bool) ([]byte, error) {
	alg, ok := algorithms[roomVersion]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownRoomVersion, roomVersion)
	}
	if !json.Valid(event) {
		return nil, fmt.Errorf("%w: not valid JSON", ErrMalformed)
	}
	open := skipSpace(event, 0)
	if event[open] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}

	// First pass: the event type decides what content keeps, and content
	// may come before type. Refuse duplicates of kept keys here.
	var (
		buf     [maxName]byte
		tbuf    [maxName]byte
		seen    uint64
		typ     []byte
		hasType bool
	)
	it := newObjectIter(event, open)
	for m, ok := it.next(); ok; m, ok = it.next() {
		name, ok := asciiName(event[m.key:m.keyEnd], &buf)
		if !ok && hashing {
			// Unicode folding matches "ſender" to "sender" too.
			return nil, fmt.Errorf("%w: a top-level key that is not short ASCII", ErrMalformed)
		}
		if !ok {
			continue
		}
		if hashing && indexOf(gmslTopLevel, name) < 0 {
			for _, field := range gmslTopLevel {
				if strings.EqualFold(field, string(name)) {
					return nil, fmt.Errorf("%w: top-level key %q differs from %q only in case", ErrMalformed, name, field)
				}
			}
		}
		i := indexOf(alg.top, name)
		if i < 0 {
			continue
		}
		if seen&(1<<i) != 0 {
			return nil, fmt.Errorf("%w: duplicate top-level key %q at offset %d", ErrMalformed, alg.top[i], m.key)
		}
		seen |= 1 << i
		switch alg.top[i] {
		case keyType:
			if event[m.value] != '"' {
				return nil, fmt.Errorf("%w: type is not a string (offset %d)", ErrMalformed, m.value)
			}
			typ, _ = asciiName(event[m.value:m.end], &tbuf)
			hasType = true
		case keyContent:
			if event[m.value] != '{' {
				return nil, fmt.Errorf("%w: content is not an object (offset %d)", ErrMalformed, m.value)
			}
		}
	}
	if !hasType {
		return nil, fmt.Errorf("%w: no type", ErrMalformed)
	}
	// A type that asciiName refused (too long, or escaping a non-ASCII
	// character) is no type with a rule: typ is nil and rule is zero.
	rule := alg.content[string(typ)]

	// Second pass: copy what is kept.
	out := make([]byte, 0, len(event))
	out = append(out, event[:open+1]...) // leading whitespace and '{'
	first := true
	it = newObjectIter(event, open)
	for m, ok := it.next(); ok; m, ok = it.next() {
		name, ok := asciiName(event[m.key:m.keyEnd], &buf)
		if !ok {
			continue
		}
		i := indexOf(alg.top, name)
		if i < 0 || (hashing && indexOf(hashOmits, name) >= 0) {
			continue
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		if alg.top[i] != keyContent || rule.all {
			out = append(out, event[m.start:m.end]...)
			continue
		}
		out = append(out, event[m.start:m.value]...)
		var err error
		if out, err = redactContent(out, event, m.value, rule); err != nil {
			return nil, err
		}
	}
	// The whitespace before the closing brace, the brace, and any trailing
	// whitespace.
	out = append(out, event[it.i:]...)
	return out, nil
}

// redactContent appends to out the content object that begins at b[open],
// keeping only what rule keeps.
func redactContent(out, b []byte, open int, rule contentRule) ([]byte, error) {
	var (
		buf  [maxName]byte
		seen uint64
		tpi  bool // seen third_party_invite
	)
	out = append(out, '{')
	first := true
	it := newObjectIter(b, open)
	for m, ok := it.next(); ok; m, ok = it.next() {
		name, ok := asciiName(b[m.key:m.keyEnd], &buf)
		if !ok {
			continue
		}
		if rule.thirdPartyInviteSigned && string(name) == keyThirdPartyInvite {
			if tpi {
				return nil, fmt.Errorf("%w: duplicate content key %q at offset %d", ErrMalformed, keyThirdPartyInvite, m.key)
			}
			tpi = true
			// Only an object has a signed key to keep; any other
			// third_party_invite is removed whole (as Synapse does).
			if b[m.value] != '{' {
				continue
			}
			if !first {
				out = append(out, ',')
			}
			first = false
			out = append(out, b[m.start:m.value]...)
			var err error
			if out, err = keepSigned(out, b, m.value); err != nil {
				return nil, err
			}
			continue
		}
		i := indexOf(rule.keys, name)
		if i < 0 {
			continue
		}
		if seen&(1<<i) != 0 {
			return nil, fmt.Errorf("%w: duplicate content key %q at offset %d", ErrMalformed, rule.keys[i], m.key)
		}
		seen |= 1 << i
		if !first {
			out = append(out, ',')
		}
		first = false
		out = append(out, b[m.start:m.end]...)
	}
	return append(out, b[it.i:it.close+1]...), nil
}

// keepSigned appends to out the third_party_invite object that begins at
// b[open] with only its signed key (fragments/v11-redactions.md: "it allows
// the signed key of the third_party_invite key"; v11.md: third_party_invite
// "will only contain the signed key after redaction").
func keepSigned(out, b []byte, open int) ([]byte, error) {
	var buf [maxName]byte
	out = append(out, '{')
	kept := false
	it := newObjectIter(b, open)
	for m, ok := it.next(); ok; m, ok = it.next() {
		name, ok := asciiName(b[m.key:m.keyEnd], &buf)
		if !ok || string(name) != keySigned {
			continue
		}
		if kept {
			return nil, fmt.Errorf("%w: duplicate key %q in third_party_invite at offset %d", ErrMalformed, keySigned, m.key)
		}
		kept = true
		out = append(out, b[m.start:m.end]...)
	}
	return append(out, b[it.i:it.close+1]...), nil
}

// Supported reports whether Event knows roomVersion's redaction algorithm.
func Supported(roomVersion string) bool {
	_, ok := algorithms[roomVersion]
	return ok
}
