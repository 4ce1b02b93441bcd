// Package setting holds the one rule every configuration struct of
// fedhistory follows for its limits: the zero value (or a negative one)
// means the documented default, so that a zero Config is a safe one.
package setting

// Default replaces a zero or negative limit with its default.
func Default[T ~int | ~int64](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}
