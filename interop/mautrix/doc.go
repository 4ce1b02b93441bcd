// Package mautrix holds tests only: that fedhistory's sign package and
// mautrix-go agree about signing keys, key documents and X-Matrix request
// signatures. They live in the interop module so that importing fedhistory
// does not pull mautrix-go into a homeserver's build.
package mautrix
