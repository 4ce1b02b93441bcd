package roomgen

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"
)

// finishV1 rewrites an event of room versions 1 and 2, as built by
// gomatrixserverlib, into its final form, and returns it with its reference
// hash.
//
// In those versions the event ID is chosen by the origin server ("$opaque:
// origin") and prev_events/auth_events are [event ID, {"sha256": reference
// hash}] pairs. gomatrixserverlib draws the opaque part from a global random
// source, which would make output depend on the run, and cannot fill in the
// reference hashes of events it has not seen; so the ID and both lists are
// replaced here, then the content hash and signature are computed again
// (spec: server-server-api, "Calculating the content hash for an event" and
// "Signing events").
func (b *Builder) finishV1(pdu gomatrixserverlib.PDU, prevs, auths []string, origin string, key ed25519.PrivateKey) (gomatrixserverlib.PDU, [sha256.Size]byte, error) {
	var refHash [sha256.Size]byte
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(pdu.JSON(), &fields); err != nil {
		return nil, refHash, fmt.Errorf("roomgen: decoding built event: %w", err)
	}
	id := "$" + b.randomString(18) + ":" + origin
	var err error
	if fields["event_id"], err = json.Marshal(id); err != nil {
		return nil, refHash, err
	}
	if fields["prev_events"], err = b.references(prevs); err != nil {
		return nil, refHash, err
	}
	if fields["auth_events"], err = b.references(auths); err != nil {
		return nil, refHash, err
	}
	delete(fields, "hashes")
	delete(fields, "signatures")
	delete(fields, "unsigned")

	// The content hash covers the event without signatures, unsigned and
	// hashes.
	hashable, err := canonical(fields)
	if err != nil {
		return nil, refHash, err
	}
	contentHash := sha256.Sum256(hashable)
	if fields["hashes"], err = json.Marshal(map[string]string{"sha256": base64.RawStdEncoding.EncodeToString(contentHash[:])}); err != nil {
		return nil, refHash, err
	}

	// The signature, like the reference hash, covers the redacted event
	// without signatures and unsigned.
	unsignedJSON, err := json.Marshal(fields)
	if err != nil {
		return nil, refHash, err
	}
	redacted, err := b.verImpl.RedactEventJSON(unsignedJSON)
	if err != nil {
		return nil, refHash, fmt.Errorf("roomgen: redacting event: %w", err)
	}
	redacted, err = gomatrixserverlib.CanonicalJSON(redacted)
	if err != nil {
		return nil, refHash, err
	}
	refHash = sha256.Sum256(redacted)
	signed, err := gomatrixserverlib.SignJSON(origin, b.keyID, key, redacted)
	if err != nil {
		return nil, refHash, fmt.Errorf("roomgen: signing event: %w", err)
	}
	var signatures struct {
		Signatures json.RawMessage `json:"signatures"`
	}
	if err := json.Unmarshal(signed, &signatures); err != nil {
		return nil, refHash, err
	}
	fields["signatures"] = signatures.Signatures

	final, err := canonical(fields)
	if err != nil {
		return nil, refHash, err
	}
	res, err := b.verImpl.NewEventFromTrustedJSON(final, false)
	if err != nil {
		return nil, refHash, fmt.Errorf("roomgen: re-parsing rewritten event: %w", err)
	}
	return res, refHash, nil
}

// references renders event IDs as the [id, {"sha256": reference hash}]
// pairs of room versions 1 and 2.
func (b *Builder) references(ids []string) (json.RawMessage, error) {
	pairs := make([][2]any, 0, len(ids))
	for _, id := range ids {
		info, ok := b.infos[id]
		if !ok {
			return nil, fmt.Errorf("event %s: %w", id, ErrUnknownEvent)
		}
		pairs = append(pairs, [2]any{id, map[string]string{"sha256": base64.RawStdEncoding.EncodeToString(info.refHash[:])}})
	}
	return json.Marshal(pairs)
}

func canonical(fields map[string]json.RawMessage) ([]byte, error) {
	raw, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	return gomatrixserverlib.CanonicalJSON(raw)
}
