package main

import (
	"context"
	"fmt"

	"github.com/fedhistory/fedhistory/sign"
)

func runKeygen(_ context.Context, out streams, args []string) error {
	fs := newFlagSet("keygen")
	outPath := fs.String("out", "", "`FILE` where to write the key; it must not exist yet (required)")
	if err := parseFlags(fs, args, out.stdout, "--out FILE", `
Writes a new ed25519 signing key in the Synapse format (mode 0600) and prints
its public half as KEYID:BASE64KEY, the form serve --trust SERVER=… takes.`); err != nil {
		return err
	}
	if err := requireFlags(fs, "out"); err != nil {
		return err
	}
	key, err := sign.GenerateKey(nil)
	if err != nil {
		return err
	}
	// WriteKeyFile refuses to replace a file: a lost key breaks every
	// signature made with it.
	if err := sign.WriteKeyFile(*outPath, key); err != nil {
		return err
	}
	fmt.Fprintf(out.stdout, "%s:%s\n", key.ID, encodePublicKey(key))
	return nil
}
