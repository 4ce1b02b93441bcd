package sign

import "context"

// originKey is the context key under which an authenticated request's
// origin is stored. An unexported type makes collisions impossible.
type originKey struct{}

// ContextWithOrigin returns ctx carrying the authenticated origin server
// name. The verification middleware calls it; a homeserver that authenticates
// requests itself calls it before handing the request to fedhistory.
func ContextWithOrigin(ctx context.Context, origin string) context.Context {
	return context.WithValue(ctx, originKey{}, origin)
}

// OriginFromContext returns the authenticated origin server name, and false
// when the request was not authenticated.
func OriginFromContext(ctx context.Context) (string, bool) {
	origin, ok := ctx.Value(originKey{}).(string)
	return origin, ok && origin != ""
}
