package main

import (
	"context"
	"fmt"
	"runtime/debug"
)

func runVersion(_ context.Context, out streams, args []string) error {
	fs := newFlagSet("version")
	if err := parseFlags(fs, args, out.stdout, "", `
Prints the version of fedhistory: the module version it was built as ("devel"
when built from a work tree), and the VCS revision it was built from when the
build recorded one.`); err != nil {
		return err
	}
	info, _ := debug.ReadBuildInfo()
	fmt.Fprintf(out.stdout, "fedhistory %s\n", versionString(info))
	return nil
}

// versionString describes a build: "v1.2.3", or "devel" when the module
// version is unknown, followed by the VCS revision when the build recorded
// one, e.g. "devel (revision 0123abcd…, modified)".
func versionString(info *debug.BuildInfo) string {
	if info == nil {
		return "devel"
	}
	version := info.Main.Version
	if version == "" || version == "(devel)" {
		version = "devel"
	}
	var revision string
	var modified bool
	for _, setting := range info.Settings {
		switch setting.Key {
		case "vcs.revision":
			revision = setting.Value
		case "vcs.modified":
			modified = setting.Value == "true"
		}
	}
	if revision == "" {
		return version
	}
	if modified {
		return fmt.Sprintf("%s (revision %s, modified)", version, revision)
	}
	return fmt.Sprintf("%s (revision %s)", version, revision)
}
