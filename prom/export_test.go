package prom

import "time"

// KeyFetch reports a key fetch, as the verifier's hooks will.
func (m *Metrics) KeyFetch(source string, d time.Duration, err error) { m.keyFetch(source, d, err) }
