package sqlstore

import "testing"

// skipUntilRoundTwo skips the checks against the round-two contract (#12:
// OriginServerTS, applied redactions, fail-closed state) and against
// memstore, which implements it, until sqlstore does: that work is on the
// sql branch. The merge of that branch deletes this file and its callers.
func skipUntilRoundTwo(t *testing.T) {
	t.Helper()
	t.Skip("sqlstore implements the round-two store contract (#12) on branch sql; memstore and storetest already check it")
}
