package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/fedhistory/fedhistory/internal/roomdump"
	"github.com/fedhistory/fedhistory/sqlstore"
)

func runImport(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("import")
	dsn := fs.String("db", "", "`DSN` the database, sqlite:FILE or postgres://…, created or migrated as needed (required)")
	var rooms stringList
	fs.Var(&rooms, "room", "`FILE` a room dump to import (repeatable; at least one)")
	if err := parseFlags(fs, args, out.stdout, "--db DSN --room FILE [--room FILE…]", `
Imports room dumps into a SQL database for serve --db. Every line of every dump
is validated first; the events are then added in one transaction, so a bad line
or a failed add (an event already in the database, say) imports nothing.`); err != nil {
		return err
	}
	if err := requireFlags(fs, "db", "room"); err != nil {
		return err
	}

	start := time.Now()
	// On a terminal, a live line counts the lines read (which needs their
	// number first) and then the time the transaction takes; elsewhere the
	// last line says how long it all took.
	reading := newProgress(out.stderr, "fedhistory import: reading", progressDelay)
	var lines int
	if reading.tty {
		var err error
		if lines, err = countLines(rooms); err != nil {
			return err
		}
		reading.update(0, lines)
	}
	var pending []sqlstore.Pending
	var erased []string
	roomIDs := make(map[string]bool)
	var read int
	for _, path := range rooms {
		records, err := readDump(path, func(n int) {
			if reading.tty {
				read += n
				reading.update(read, lines)
			}
		})
		if err != nil {
			return err
		}
		for _, rec := range records {
			if rec.ErasedUser != "" {
				erased = append(erased, rec.ErasedUser)
				continue
			}
			roomIDs[rec.RoomID] = true
			pending = append(pending, sqlstore.Pending{
				RoomVersion: rec.RoomVersion,
				PDU:         rec.Event,
				Options:     rec.Options(),
				// The reader hashed the event for its ID already.
				EventID: rec.EventID,
			})
		}
	}

	if reading.tty {
		reading.done()
	}

	store, err := sqlstore.Open(ctx, *dsn, sqlstore.Options{Migrate: true})
	if err != nil {
		return fmt.Errorf("opening --db: %w", err)
	}
	defer store.Close()
	// One transaction, which tells nothing of its progress until it ends.
	adding := newProgress(out.stderr, fmt.Sprintf("fedhistory import: adding %d events in one transaction", len(pending)), progressDelay)
	if adding.tty {
		adding.tick()
	}
	err = store.AddBatch(ctx, pending)
	if adding.tty {
		adding.done()
	}
	if err != nil {
		return fmt.Errorf("importing (nothing was imported): %w", err)
	}
	for _, user := range erased {
		if err := store.EraseUser(ctx, user); err != nil {
			return fmt.Errorf("marking %s erased: %w", user, err)
		}
	}
	if err := store.Close(); err != nil {
		return err
	}
	elapsed := time.Since(start)
	fmt.Fprintf(out.stderr, "fedhistory import: imported %d events of %d rooms and %d erased users in %s (%.0f events/s)\n",
		len(pending), len(roomIDs), len(erased), roundDuration(elapsed), float64(len(pending))/elapsed.Seconds())
	return nil
}

// readDump reads and validates a whole room dump, calling lines with the
// number of lines of each piece of it read.
func readDump(path string, lines func(int)) ([]roomdump.Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading room dump: %w", err)
	}
	defer f.Close()
	records, err := roomdump.Read(lineCounter{f, lines})
	if err != nil {
		return nil, fmt.Errorf("reading room dump %s: %w", path, err)
	}
	return records, nil
}

// lineCounter is a reader that reports the lines read through it.
type lineCounter struct {
	r     io.Reader
	lines func(int)
}

func (c lineCounter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if lines := bytes.Count(p[:n], []byte{'\n'}); lines > 0 {
		c.lines(lines)
	}
	return n, err
}

// countLines counts the lines of the files, the events they hold (and
// erasures) for the progress line.
func countLines(paths []string) (int, error) {
	var total int
	buf := make([]byte, 256<<10)
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			return 0, fmt.Errorf("reading room dump: %w", err)
		}
		for {
			n, err := f.Read(buf)
			total += bytes.Count(buf[:n], []byte{'\n'})
			if err == io.EOF {
				break
			}
			if err != nil {
				f.Close()
				return 0, fmt.Errorf("reading room dump %s: %w", path, err)
			}
		}
		f.Close()
	}
	return total, nil
}
