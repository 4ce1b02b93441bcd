package memstore

import (
	"github.com/matrix-org/gomatrixserverlib"

	"github.com/fedhistory/fedhistory/internal/pdu"
)

// Redactions follow "Redactions" on fedhistory.EventStore, with the rules
// of package pdu (RedactionApplies, MayRedact). A redaction is judged once,
// with the state before it, which never changes once it is stored; its
// target may arrive before or after it.

// pendingRedaction is a redaction whose target the store did not hold when
// the redaction was added.
type pendingRedaction struct {
	redaction *record
	// senderMayRedact is pdu.MayRedact in the state before the redaction.
	senderMayRedact bool
}

// redactionEffects is what adding one event does to redactions. Add works
// it out before anything can fail and applies it once nothing can.
type redactionEffects struct {
	s   *Store
	rec *record
	// self: a redaction that arrived before rec applies to it.
	self bool
	// target is the held event that rec, a redaction, redacts.
	target *record
	// waitFor is the ID of rec's target when the store does not hold it
	// yet; rec then waits in Store.pendingRedactions.
	waitFor string
	pending pendingRedaction
}

// redactionsOnAdd works out the redactions that adding rec applies.
// Called by Add holding addMu, once rec's state is set.
func (s *Store) redactionsOnAdd(version string, rec *record) redactionEffects {
	effects := redactionEffects{s: s, rec: rec}
	for _, p := range s.pendingRedactions[rec.ID] {
		if pdu.RedactionApplies(version, &p.redaction.Event, p.senderMayRedact, &rec.Event) {
			effects.self = true
		}
	}
	// A redaction naming itself is no redaction of another event; the
	// contract leaves the redaction event itself unaffected.
	if rec.Type != pdu.TypeRedaction || rec.Redacts == "" || rec.Redacts == rec.ID || rec.Rejected {
		return effects
	}
	may := senderMayRedact(version, rec)
	if target, ok := s.events.get(rec.Redacts); ok {
		if pdu.RedactionApplies(version, &rec.Event, may, &target.Event) {
			effects.target = target
		}
		return effects
	}
	effects.waitFor = rec.Redacts
	effects.pending = pendingRedaction{redaction: rec, senderMayRedact: may}
	return effects
}

// senderMayRedact reports whether the sender of rec has the power level
// "redact" in the state before rec: never when that state is unknown (the
// contract), and irrelevant in room versions 1 and 2, where a redaction
// that passed the auth rules always applies.
func senderMayRedact(version string, rec *record) bool {
	if !rec.stateKnown || version == "1" || version == "2" {
		return false
	}
	create, ok := rec.before.Get(stateKey{Type: pdu.TypeCreate})
	if !ok {
		return false
	}
	var powerLevels gomatrixserverlib.PDU // nil: the state has none
	if pl, ok := rec.before.Get(stateKey{Type: pdu.TypePowerLevels}); ok {
		powerLevels = pl.state.event.PDU
	}
	return pdu.MayRedact(version, create.state.event.PDU, powerLevels, rec.Sender)
}

// apply marks the redacted events and files rec under its awaited target.
// Called by Add holding addMu and mu, before rec is published.
func (e redactionEffects) apply() {
	delete(e.s.pendingRedactions, e.rec.ID)
	if e.self {
		markRedacted(e.rec)
	}
	if e.target != nil {
		markRedacted(e.target)
	}
	if e.waitFor != "" {
		e.s.pendingRedactions[e.waitFor] = append(e.s.pendingRedactions[e.waitFor], e.pending)
	}
}

// markRedacted publishes a copy of rec's event with Redacted set. Events
// handed out before keep their value: they are never modified.
func markRedacted(rec *record) {
	if rec.redacted.Load() != nil {
		return
	}
	ev := rec.Event
	ev.Redacted = true
	rec.redacted.Store(&ev)
}
