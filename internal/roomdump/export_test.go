package roomdump

// SetBlockLines sets how many lines Records and Read parse at once, and
// returns a function that puts it back.
func SetBlockLines(n int) (restore func()) {
	old := blockLines
	blockLines = n
	return func() { blockLines = old }
}
