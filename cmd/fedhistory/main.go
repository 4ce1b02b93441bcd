// Command fedhistory demonstrates, serves and queries the Matrix federation
// endpoints through which servers read a room's history (backfill,
// get_missing_events, state_ids, state, event_auth, event and
// timestamp_to_event), served by package fedhistory.
//
//	fedhistory demo                         generate a room, serve it, query it over signed HTTP
//	fedhistory serve [--room FILE]…         serve rooms and our key document
//	fedhistory backfill --server … --room …  a signed backfill request ("curl for federation")
//	fedhistory missing --server … --room …   a signed get_missing_events request
//	fedhistory state-ids --room … --event …  a signed state_ids request (also: state, event-auth)
//	fedhistory event --event …              a signed event request
//	fedhistory timestamp --room … --ts …    a signed timestamp_to_event request ("jump to date")
//	fedhistory gen --events N --out FILE    write a signed synthetic room dump
//	fedhistory keygen --out FILE            write a new signing key
//	fedhistory import --db DSN --room FILE  import room dumps into a SQL database
//	fedhistory version                      print the version (also: fedhistory --version)
//
// Every subcommand prints its options with --help, or with "fedhistory help
// SUBCOMMAND". Exit status: 0 on success, 1 on failure (including an error
// answer to a client request), 2 on bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

func main() {
	// The first SIGINT or SIGTERM cancels the context: serve drains and
	// shuts down, the other subcommands abandon their work. A second one
	// tells serve to stop waiting (see forced).
	ctx, stop := notifySignals(context.Background())
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// forceKey is the context key of the channel a second signal closes.
type forceKey struct{}

// notifySignals returns a context that the first SIGINT or SIGTERM
// cancels and whose forced channel the second closes, and the function that
// stops listening for them.
func notifySignals(parent context.Context) (context.Context, func()) {
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	force := make(chan struct{})
	ctx, cancel := context.WithCancel(context.WithValue(parent, forceKey{}, (<-chan struct{})(force)))
	stopped := make(chan struct{})
	go func() {
		for _, signalled := range []func(){cancel, func() { close(force) }} {
			select {
			case <-signals:
				signalled()
			case <-stopped:
				return
			}
		}
	}()
	return ctx, func() {
		signal.Stop(signals)
		close(stopped)
		cancel()
	}
}

// forced returns the channel that a second signal closes, once the first
// cancelled ctx: the user insists on stopping now. It is nil, never closed,
// when ctx does not come from notifySignals.
func forced(ctx context.Context) <-chan struct{} {
	force, _ := ctx.Value(forceKey{}).(<-chan struct{})
	return force
}

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// streams are where a subcommand writes: results to stdout, everything meant
// for the person running it (progress, logs, errors) to stderr.
type streams struct {
	stdout, stderr io.Writer
}

// subcommand is one "fedhistory NAME" command.
type subcommand struct {
	name    string
	summary string
	run     func(ctx context.Context, io streams, args []string) error
}

func subcommands() []subcommand {
	return []subcommand{
		{"demo", "generate a demo room, serve it and query it over signed HTTP", runDemo},
		{"serve", "serve the history endpoints and our key document", runServe},
		{"backfill", "send a signed backfill request and print the answer", runBackfill},
		{"missing", "send a signed get_missing_events request and print the answer", runMissing},
		{"state-ids", "send a signed state_ids request and print the IDs of the state and its auth chain", runStateIDs},
		{"state", "send a signed state request and print one line per PDU of the state and its auth chain", runState},
		{"event-auth", "send a signed event_auth request and print one line per PDU of the auth chain", runEventAuth},
		{"event", "send a signed event request and print the event", runEvent},
		{"timestamp", "send a signed timestamp_to_event request and print the event found", runTimestamp},
		{"gen", "write a signed synthetic room dump", runGen},
		{"keygen", "write a new signing key", runKeygen},
		{"import", "import room dumps into a SQL database for serve --db", runImport},
		{"migrate", "create or update the schema of a SQL database for serve --db", runMigrate},
		{"version", "print the version of fedhistory", runVersion},
	}
}

// lookup returns the subcommand called name.
func lookup(name string) (subcommand, bool) {
	for _, cmd := range subcommands() {
		if cmd.name == name {
			return cmd, true
		}
	}
	return subcommand{}, false
}

// run executes the command line args (without the program name) and returns
// the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	out := streams{stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		return badSubcommand(stderr, "missing subcommand")
	}
	name, args := args[0], args[1:]
	switch name {
	case "-h", "-help", "--help":
		printTopUsage(stdout)
		return exitOK
	case "-version", "--version":
		name = "version"
	case "help":
		// "help SUBCOMMAND" is "SUBCOMMAND --help"; "help" alone is the list.
		if len(args) == 0 {
			printTopUsage(stdout)
			return exitOK
		}
		if len(args) > 1 {
			return badSubcommand(stderr, "help takes one subcommand")
		}
		name, args = args[0], []string{"--help"}
	}
	cmd, ok := lookup(name)
	if !ok {
		return badSubcommand(stderr, fmt.Sprintf("unknown subcommand %q", name))
	}
	err := cmd.run(ctx, out, args)
	var usage *usageError
	switch {
	case err == nil, errors.Is(err, errHelpShown):
		return exitOK
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "fedhistory %s: %s (see fedhistory %s --help)\n", name, oneLine(usage.msg), name)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "fedhistory %s: %s\n", name, oneLine(err.Error()))
		return exitFailure
	}
}

// badSubcommand reports a command line without a known subcommand, followed
// by the usage, on stderr.
func badSubcommand(stderr io.Writer, msg string) int {
	fmt.Fprintf(stderr, "fedhistory: %s\n\n", msg)
	printTopUsage(stderr)
	return exitUsage
}

func printTopUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: fedhistory SUBCOMMAND [OPTIONS]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Serve and query the Matrix federation endpoints through which servers read a room's history.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Subcommands:")
	for _, cmd := range subcommands() {
		fmt.Fprintf(w, "  %-10s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run \"fedhistory help SUBCOMMAND\" (or \"fedhistory SUBCOMMAND --help\") for the options of one subcommand.")
}

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// errHelpShown reports that --help was asked for and answered: exit status 0.
var errHelpShown = errors.New("help shown")

// oneLine keeps a message on one line, so that every failure is exactly one
// line of stderr whatever a wrapped error contains.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// newFlagSet returns a flag set that reports errors to parseFlags instead of
// printing them: usage errors must be one line, and --help goes to stdout.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("fedhistory "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseFlags parses args into fs. With --help it prints synopsis, description
// and the options to stdout and returns errHelpShown; a bad flag or a
// positional argument is a usageError.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer, synopsis, description string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout, fs, synopsis, description)
			return errHelpShown
		}
		return &usageError{msg: err.Error()}
	}
	if fs.NArg() > 0 {
		return usageErrorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

// printUsage prints the options with the double-dash spelling the
// documentation uses (the flag package accepts both).
//
// A flag that takes a value starts its usage with the value's back-quoted
// placeholder, then says what the value is: "`HOST:PORT` the address to
// listen on". The flag package takes the placeholder from the back quotes;
// printUsage shows it after the flag's name and not again in the sentence.
func printUsage(w io.Writer, fs *flag.FlagSet, synopsis, description string) {
	fmt.Fprintf(w, "Usage: %s\n\n", strings.TrimSpace(fs.Name()+" "+synopsis))
	fmt.Fprintf(w, "%s\n", strings.TrimSpace(description))
	first := true
	fs.VisitAll(func(f *flag.Flag) {
		if first {
			fmt.Fprint(w, "\nOptions:\n")
			first = false
		}
		valueName, usage := flag.UnquoteUsage(f)
		line := "  --" + f.Name
		if valueName != "" {
			line += " " + valueName
			usage = strings.TrimPrefix(usage, valueName+" ")
		}
		fmt.Fprintln(w, line)
		if !isZeroDefault(f) {
			usage += fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "        %s\n", strings.ReplaceAll(usage, "\n", "\n        "))
	})
}

// requireFlags returns a usageError naming, all at once, every one of names
// that the command line did not give a value (an empty string counts as
// none).
func requireFlags(fs *flag.FlagSet, names ...string) error {
	given := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) {
		if f.Value.String() != "" {
			given[f.Name] = true
		}
	})
	var missing []string
	for _, name := range names {
		if !given[name] {
			missing = append(missing, "--"+name)
		}
	}
	switch len(missing) {
	case 0:
		return nil
	case 1:
		return usageErrorf("%s is required", missing[0])
	default:
		last := len(missing) - 1
		return usageErrorf("%s and %s are required", strings.Join(missing[:last], ", "), missing[last])
	}
}

func isZeroDefault(f *flag.Flag) bool {
	switch f.DefValue {
	case "", "0", "false", "[]":
		return true
	}
	return false
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}
