// Package fedhistory serves the two Matrix federation history endpoints,
// GET /_matrix/federation/v1/backfill/{roomId} and
// POST /_matrix/federation/v1/get_missing_events/{roomId}, from a
// homeserver's own EventStore, behind X-Matrix request authentication
// (package sign), server ACLs, room membership and history visibility.
package fedhistory
