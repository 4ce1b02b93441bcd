package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/sign"
)

// demoServerName is the server that holds and serves the demo room.
const demoServerName = "hs1.example"

// demoBackfillLimit is the page size of the demo's backfill: enough to
// reach from after hs2's join back into the shared history.
const demoBackfillLimit = 40

func runDemo(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("demo")
	version := fs.String("room-version", roomgen.DefaultVersion, "`VERSION` the room version of the demo room")
	if err := parseFlags(fs, args, out.stdout, "[--room-version VERSION]", `
Generates a signed demo room held by hs1.example, serves it on a loopback port,
and queries it as a second server, hs2.example, whose signing key hs1.example
fetches from hs2.example's own key server on another loopback port. Prints
what backfill returns, which events were redacted and why; the size of the
state at the event backfilled from (state_ids); a jump to the middle of the
room's history (timestamp_to_event, then event and backfill from the event
found); what get_missing_events returns; and two refused requests.`); err != nil {
		return err
	}
	if !gomatrixserverlib.StableRoomVersion(gomatrixserverlib.RoomVersion(*version)) {
		return usageErrorf("--room-version %q is not a stable room version", *version)
	}
	// Warnings only: the demo's own output tells what each request did.
	logger := slog.New(slog.NewTextHandler(out.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return demo(ctx, out.stdout, out.stderr, *version, logger)
}

func demo(ctx context.Context, stdout, stderr io.Writer, version string, logger *slog.Logger) error {
	keys := make(map[string]*sign.SigningKey)
	for _, server := range []string{demoServerName, demoJoinerServer, demoDeniedServer} {
		key, err := sign.GenerateKey(nil)
		if err != nil {
			return err
		}
		keys[server] = key
	}

	started := time.Now()
	progress := newProgress(stderr, "generating the demo room", progressDelay)
	room, err := buildDemoRoom(demoRoomOptions{
		ServerName: demoServerName, Key: keys[demoServerName], Version: version, Progress: progress.update,
	})
	progress.done()
	if err != nil {
		return err
	}
	generated := time.Since(started)
	store, err := newDemoStore(room.Room)
	if err != nil {
		return err
	}

	// The requesting servers publish their keys on loopback ports of their
	// own; hs1 knows no key in advance and fetches them on first use.
	resolve := make(map[string]string)
	for _, server := range []string{demoJoinerServer, demoDeniedServer} {
		keyServer, err := startLoopbackServer(sign.KeyDocumentHandler(server, []*sign.SigningKey{keys[server]}, 0, nil), logger)
		if err != nil {
			return err
		}
		defer keyServer.Close()
		resolve[server] = keyServer.URL
	}
	handler, _, err := newFederationHandler(federationServerConfig{
		ServerName: demoServerName,
		Key:        keys[demoServerName],
		Store:      store,
		Resolve:    resolve,
		Logger:     logger,
	})
	if err != nil {
		return err
	}
	hs1, err := startLoopbackServer(handler, logger)
	if err != nil {
		return err
	}
	defer hs1.Close()

	httpClient := &http.Client{Timeout: 30 * time.Second}
	r := &demoReport{
		w: stdout, store: store, room: room,
		version: gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(room.Room.Version)),
	}
	r.introduce(hs1.URL, resolve, keys, generated)

	hs2 := &federationClient{
		base: hs1.URL, destination: demoServerName, origin: demoJoinerServer,
		key: keys[demoJoinerServer], send: httpClient.Do,
	}
	if err := r.backfill(ctx, hs2); err != nil {
		return err
	}
	if err := r.stateIDs(ctx, hs2); err != nil {
		return err
	}
	if err := r.jumpToDate(ctx, hs2); err != nil {
		return err
	}
	if err := r.missingEvents(ctx, hs2); err != nil {
		return err
	}

	unsigned := &federationClient{base: hs1.URL, send: httpClient.Do}
	if err := r.refused(ctx, "Without a signature", unsigned, "(no Authorization header)"); err != nil {
		return err
	}
	evil := &federationClient{
		base: hs1.URL, destination: demoServerName, origin: demoDeniedServer,
		key: keys[demoDeniedServer], send: httpClient.Do,
	}
	if err := r.refused(ctx, "From "+demoDeniedServer+", whose user "+room.Denied+" is joined but whose server the ACL denies",
		evil, "signed by "+demoDeniedServer); err != nil {
		return err
	}
	r.summarize()
	return nil
}

// demoReport prints the demo's findings.
type demoReport struct {
	w       io.Writer
	store   *memstore.Store
	room    *demoRoom
	version gomatrixserverlib.IRoomVersion
	// Tallies for the summary.
	backfilled, backfillRedacted int
	missing, missingRedacted     int
	refusals                     []string
}

func (r *demoReport) printf(format string, args ...any) {
	fmt.Fprintf(r.w, format, args...)
}

func (r *demoReport) introduce(hs1URL string, resolve map[string]string, keys map[string]*sign.SigningKey, generated time.Duration) {
	room := r.room
	r.printf("Demo room %s (room version %s): %d signed events, generated in %s.\n",
		room.Room.ID, room.Room.Version, len(room.Room.Events), generated.Round(time.Millisecond))
	r.printf("  %s serves it on %s, key document included.\n", demoServerName, hs1URL)
	r.printf("  %s asks, signing with %s; %s fetches that key from %s.\n",
		demoJoinerServer, keys[demoJoinerServer].ID, demoServerName, resolve[demoJoinerServer])
	r.printf("  History is shared up to depth %d, joined from depth %d (%s) on; %s joins at depth %d.\n",
		room.JoinedVisibility.Depth-1, room.JoinedVisibility.Depth, shortID(room.JoinedVisibility.ID), room.Joiner, room.JoinerJoin.Depth)
	r.printf("  The server ACL denies %s, although %s is joined.\n", demoDeniedServer, room.Denied)
}

func (r *demoReport) backfill(ctx context.Context, client *federationClient) error {
	from := r.room.BackfillFrom
	r.printf("\nBackfill as %s from %s (depth %d), limit %d:\n  GET %s\n",
		client.origin, shortID(from.ID), from.Depth, demoBackfillLimit, backfillURI(r.room.Room.ID, []string{from.ID}, demoBackfillLimit))
	resp, err := client.Backfill(ctx, r.room.Room.ID, []string{from.ID}, demoBackfillLimit)
	if err != nil {
		return err
	}
	if err := resp.asError(); err != nil {
		return fmt.Errorf("backfill: %w", err)
	}
	var txn struct {
		Origin string            `json:"origin"`
		PDUs   []json.RawMessage `json:"pdus"`
	}
	if err := json.Unmarshal(resp.Body, &txn); err != nil {
		return fmt.Errorf("backfill answer: %w", err)
	}
	r.printf("  → %d OK, a transaction from %s with %d PDUs, newest first:\n", resp.Status, txn.Origin, len(txn.PDUs))
	r.backfilled = len(txn.PDUs)
	redacted, err := r.printEvents(ctx, client.origin, txn.PDUs)
	r.backfillRedacted = redacted
	return err
}

// stateIDs asks for the IDs of the state at the event the backfill
// started from, and prints how many there are and one of each list.
func (r *demoReport) stateIDs(ctx context.Context, client *federationClient) error {
	at := r.room.BackfillFrom
	r.printf("\nState at %s (depth %d) as %s:\n  GET %s\n",
		shortID(at.ID), at.Depth, client.origin, stateURI(true, r.room.Room.ID, at.ID))
	resp, err := client.StateIDs(ctx, r.room.Room.ID, at.ID)
	if err != nil {
		return err
	}
	if err := resp.asError(); err != nil {
		return fmt.Errorf("state_ids: %w", err)
	}
	var answer struct {
		PDUIDs       []string `json:"pdu_ids"`
		AuthChainIDs []string `json:"auth_chain_ids"`
	}
	if err := json.Unmarshal(resp.Body, &answer); err != nil {
		return fmt.Errorf("state_ids answer: %w", err)
	}
	if len(answer.PDUIDs) == 0 || len(answer.AuthChainIDs) == 0 {
		return fmt.Errorf("state_ids answer: %d state IDs and %d auth chain IDs, want some of each", len(answer.PDUIDs), len(answer.AuthChainIDs))
	}
	r.printf("  → %d OK, %d state event IDs and %d auth chain IDs; the first of each, by ID:\n",
		resp.Status, len(answer.PDUIDs), len(answer.AuthChainIDs))
	// hs2 learns the IDs; what they are, the demo looks up in the room it
	// generated, as hs2 would with /event.
	for _, list := range []struct {
		name string
		ids  []string
	}{{"state", answer.PDUIDs}, {"auth chain", answer.AuthChainIDs}} {
		id := slices.Min(list.ids)
		r.printf("    %-10s  %s  %s\n", list.name, shortID(id), r.describeID(id))
	}
	return nil
}

// describeID names the type and state key of an event of the demo room.
func (r *demoReport) describeID(id string) string {
	for _, ev := range r.room.Room.Events {
		if ev.ID != id {
			continue
		}
		summary, err := summarizeEvent(r.version, ev.JSON)
		if err != nil {
			return "?"
		}
		if summary.StateKey != nil && *summary.StateKey != "" {
			return summary.Type + " " + *summary.StateKey
		}
		return summary.Type
	}
	return "(not an event of the demo room)"
}

// demoJumpLimit is the page size of the backfill after the jump to a date.
const demoJumpLimit = 5

// jumpToDate finds the event at the middle of the room's time span with
// timestamp_to_event, fetches it with event, and backfills from it.
func (r *demoReport) jumpToDate(ctx context.Context, client *federationClient) error {
	events := r.room.Room.Events
	first, err := summarizeEvent(r.version, events[0].JSON)
	if err != nil {
		return err
	}
	last, err := summarizeEvent(r.version, events[len(events)-1].JSON)
	if err != nil {
		return err
	}
	middle := first.OriginServerTS + (last.OriginServerTS-first.OriginServerTS)/2
	roomID := r.room.Room.ID
	r.printf("\nJump to date: the room's events run from %s to %s; the middle is %s.\n",
		formatTimestamp(first.OriginServerTS), formatTimestamp(last.OriginServerTS), formatTimestamp(middle))

	r.printf("  GET %s\n", timestampURI(roomID, middle, "b"))
	resp, err := client.TimestampToEvent(ctx, roomID, middle, "b")
	if err != nil {
		return err
	}
	if err := resp.asError(); err != nil {
		return fmt.Errorf("timestamp_to_event: %w", err)
	}
	var found timestampAnswer
	if err := json.Unmarshal(resp.Body, &found); err != nil {
		return fmt.Errorf("timestamp_to_event answer: %w", err)
	}
	r.printf("  → %d OK, %s, sent %s (%s the middle)\n", resp.Status, shortID(found.EventID),
		formatTimestamp(found.OriginServerTS), describeOffset(found.OriginServerTS, middle))

	r.printf("  GET %s\n", eventURI(found.EventID))
	resp, err = client.Event(ctx, found.EventID)
	if err != nil {
		return err
	}
	if err := resp.asError(); err != nil {
		return fmt.Errorf("event: %w", err)
	}
	var txn struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := json.Unmarshal(resp.Body, &txn); err != nil {
		return fmt.Errorf("event answer: %w", err)
	}
	if len(txn.PDUs) != 1 {
		return fmt.Errorf("event answer: %d PDUs, want 1", len(txn.PDUs))
	}
	ev, err := summarizeEvent(r.version, txn.PDUs[0])
	if err != nil {
		return err
	}
	what := ev.Summary()
	if ev.Redacted {
		what = "[redacted]"
	}
	r.printf("  → %d OK, %s from %s at depth %d: %s\n", resp.Status, ev.Type, ev.Sender, ev.Depth, what)

	r.printf("  GET %s\n", backfillURI(roomID, []string{ev.ID}, demoJumpLimit))
	resp, err = client.Backfill(ctx, roomID, []string{ev.ID}, demoJumpLimit)
	if err != nil {
		return err
	}
	if err := resp.asError(); err != nil {
		return fmt.Errorf("backfill: %w", err)
	}
	var page struct {
		PDUs []json.RawMessage `json:"pdus"`
	}
	if err := json.Unmarshal(resp.Body, &page); err != nil {
		return fmt.Errorf("backfill answer: %w", err)
	}
	r.printf("  → %d OK, %d PDUs, newest first:\n", resp.Status, len(page.PDUs))
	_, err = r.printEvents(ctx, client.origin, page.PDUs)
	return err
}

func (r *demoReport) missingEvents(ctx context.Context, client *federationClient) error {
	body := missingEventsBody{
		Limit:          10,
		EarliestEvents: []string{r.room.MissingEarliest.ID},
		LatestEvents:   []string{r.room.Latest.ID},
	}
	r.printf("\nget_missing_events as %s between %s (depth %d) and %s (depth %d), limit %d:\n  POST %s\n",
		client.origin, shortID(r.room.MissingEarliest.ID), r.room.MissingEarliest.Depth,
		shortID(r.room.Latest.ID), r.room.Latest.Depth, body.Limit, missingEventsURI(r.room.Room.ID))
	resp, err := client.MissingEvents(ctx, r.room.Room.ID, body)
	if err != nil {
		return err
	}
	if err := resp.asError(); err != nil {
		return fmt.Errorf("get_missing_events: %w", err)
	}
	var answer struct {
		Events []json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(resp.Body, &answer); err != nil {
		return fmt.Errorf("get_missing_events answer: %w", err)
	}
	r.printf("  → %d OK, %d events, oldest first:\n", resp.Status, len(answer.Events))
	r.missing = len(answer.Events)
	redacted, err := r.printEvents(ctx, client.origin, answer.Events)
	r.missingRedacted = redacted
	return err
}

// refused makes a backfill request that must fail, and prints the answer.
func (r *demoReport) refused(ctx context.Context, what string, client *federationClient, how string) error {
	r.printf("\n%s:\n  GET %s  %s\n", what, backfillURI(r.room.Room.ID, []string{r.room.Latest.ID}, 5), how)
	resp, err := client.Backfill(ctx, r.room.Room.ID, []string{r.room.Latest.ID}, 5)
	if err != nil {
		return err
	}
	answer := resp.asError()
	if answer == nil {
		return fmt.Errorf("%s: the server answered %d, want a refusal", what, resp.Status)
	}
	r.printf("  → %s\n", answer.Error())
	r.refusals = append(r.refusals, answer.Error())
	return nil
}

func (r *demoReport) summarize() {
	r.printf("\nSummary: backfill returned %d events (%d whole, %d redacted); get_missing_events returned %d (%d whole, %d redacted);\n",
		r.backfilled, r.backfilled-r.backfillRedacted, r.backfillRedacted, r.missing, r.missing-r.missingRedacted, r.missingRedacted)
	r.printf("         refused: %s.\n", strings.Join(r.refusals, "; "))
}

// printEvents prints one line per PDU and returns how many were redacted.
// A receiver sees that an event was redacted by its content hash, which no
// longer matches; why it was redacted is something only hs1 knows, so the
// demo asks hs1's store for the visibility state at the event.
func (r *demoReport) printEvents(ctx context.Context, requester string, pdus []json.RawMessage) (int, error) {
	events := make([]eventSummary, 0, len(pdus))
	var redacted []eventSummary
	for _, pdu := range pdus {
		ev, err := summarizeEvent(r.version, pdu)
		if err != nil {
			return 0, err
		}
		events = append(events, ev)
		if ev.Redacted {
			redacted = append(redacted, ev)
		}
	}
	reasons, err := r.redactionReasons(ctx, requester, redacted)
	if err != nil {
		return 0, err
	}
	typeWidth, senderWidth := len("type"), len("sender")
	for _, ev := range events {
		typeWidth = max(typeWidth, len(ev.Type))
		senderWidth = max(senderWidth, len(ev.Sender))
	}
	r.printf("  %5s  %-9s  %-*s  %-*s  %s\n", "depth", "event", typeWidth, "type", senderWidth, "sender", "content")
	for _, ev := range events {
		line := fmt.Sprintf("  %5d  %-9s  %-*s  %-*s  ", ev.Depth, shortID(ev.ID), typeWidth, ev.Type, senderWidth, ev.Sender)
		if ev.Redacted {
			line += "[redacted: " + reasons[ev.ID] + "]"
			if summary := ev.Summary(); summary != "" && ev.StateKey != nil {
				line += " " + summary // what redaction keeps of a state event
			}
		} else {
			line += ev.Summary()
		}
		if len(ev.PrevEvents) > 1 {
			short := make([]string, len(ev.PrevEvents))
			for i, id := range ev.PrevEvents {
				short[i] = shortID(id)
			}
			line += "  ⤙ merges " + strings.Join(short, " + ")
		}
		r.printf("%s\n", strings.TrimRight(line, " "))
	}
	return len(redacted), nil
}

// redactionReasons explains, from the visibility state and the erasures the
// store knows, why requester may not see each of events.
func (r *demoReport) redactionReasons(ctx context.Context, requester string, events []eventSummary) (map[string]string, error) {
	reasons := make(map[string]string, len(events))
	if len(events) == 0 {
		return reasons, nil
	}
	ids := make([]string, len(events))
	senders := make([]string, len(events))
	for i, ev := range events {
		ids[i], senders[i] = ev.ID, ev.Sender
	}
	visibility, err := r.store.Visibility(ctx, r.room.Room.ID, requester, ids)
	if err != nil {
		return nil, err
	}
	if len(visibility) != len(ids) {
		return nil, fmt.Errorf("visibility of %d events: the store answered %d", len(ids), len(visibility))
	}
	erased, err := r.store.ErasedUsers(ctx, senders)
	if err != nil {
		return nil, err
	}
	for i, ev := range events {
		vis := visibility[i]
		switch {
		case erased[ev.Sender]:
			reasons[ev.ID] = "its sender is erased"
		case !vis.Known:
			reasons[ev.ID] = demoServerName + " knows no state at this event"
		case vis.Before.HistoryVisibility == "joined":
			reasons[ev.ID] = "history_visibility=joined and " + requester + " had no joined user then"
		case vis.Before.HistoryVisibility == "invited":
			reasons[ev.ID] = "history_visibility=invited and " + requester + " had no joined or invited user then"
		default:
			reasons[ev.ID] = "history_visibility=" + vis.Before.HistoryVisibility + " hides it from " + requester
		}
	}
	return reasons, nil
}

// shortID abbreviates an event ID for display: "$" and eight characters.
func shortID(id string) string {
	if len(id) > 9 {
		return id[:9]
	}
	return id
}
