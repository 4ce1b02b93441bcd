//go:build !race

package memstore

// raceEnabled: the race detector slows every memory access down tenfold.
const raceEnabled = false
