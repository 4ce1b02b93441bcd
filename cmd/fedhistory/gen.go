package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/fedhistory/fedhistory/internal/roomdump"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

func runGen(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("gen")
	events := fs.Int("events", 0, "write `N` events, the room's setup included (required)")
	outPath := fs.String("out", "", "write the dump to `FILE` (required)")
	version := fs.String("version", roomgen.DefaultVersion, "the room `VERSION`")
	forkEvery := fs.Int("fork-every", 0, "fork the DAG every `K` messages (0: a linear room)")
	seed := fs.Int64("seed", 0, "the `SEED` that makes the room; the same options give the same bytes")
	serverName := fs.String("server-name", roomgen.DefaultServerName, "the creator's server `NAME`")
	keyFile := fs.String("signing-key", "", "sign the creator's events with this key `FILE`, created if it does not exist (default: a key derived from --seed)")
	var others stringList
	fs.Var(&others, "other-server", "a server `NAME` with one joined user, @bob:NAME (repeatable; default: hs2.example)")
	historyChanges := fs.Bool("history-visibility-changes", false, "change the history visibility (shared → joined → invited → shared) along the way")
	acl := fs.Bool("server-acl", false, "add a server ACL denying evil.example")
	if err := parseFlags(fs, args, out.stdout, "--events N --out FILE [--version V] [--fork-every K] [--seed S] [--server-name NAME] [--signing-key FILE]", `
Writes a signed synthetic room (a public room with one user per --other-server,
then messages) as a room dump, one JSON line per event, for serve --room.`); err != nil {
		return err
	}
	switch {
	case *events <= 0:
		return usageErrorf("--events must be positive")
	case *outPath == "":
		return usageErrorf("--out is required")
	case *forkEvery < 0:
		return usageErrorf("--fork-every may not be negative")
	case !gomatrixserverlib.StableRoomVersion(gomatrixserverlib.RoomVersion(*version)):
		return usageErrorf("--version %q is not a stable room version", *version)
	}
	opts := roomgen.Options{
		Version:                  *version,
		Events:                   *events,
		ForkEvery:                *forkEvery,
		Seed:                     *seed,
		ServerName:               *serverName,
		OtherServers:             others,
		HistoryVisibilityChanges: *historyChanges,
		ServerACL:                *acl,
	}
	if *keyFile != "" {
		key, err := loadOrCreateKey(*keyFile, out.stderr)
		if err != nil {
			return err
		}
		opts.Key, opts.KeyID = key.Private, key.ID
	}
	progress := newProgress(out.stderr, "fedhistory gen", progressDelay)
	opts.Progress = func(done, total int) {
		if ctx.Err() == nil {
			progress.update(done, total)
		}
	}
	room, err := roomgen.Generate(opts)
	progress.done()
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := writeDump(*outPath, room); err != nil {
		return err
	}
	fmt.Fprintf(out.stderr, "fedhistory gen: wrote room %s (version %s, %d events) to %s\n", room.ID, room.Version, len(room.Events), *outPath)
	return nil
}

// writeDump writes room to path through a temporary file in the same
// directory, so that a failure never leaves a half-written dump behind.
func writeDump(path string, room *roomgen.Room) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing the dump: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly once renamed
	if err := roomdump.WriteRoom(tmp, room); err != nil {
		tmp.Close()
		return fmt.Errorf("writing the dump: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing the dump: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing the dump: %w", err)
	}
	return nil
}
