// Package requestid gives every request an X-Request-Id header, unless it arrives with one.
//
// Traefik's access log keeps the header (--accesslog.fields.headers.names.X-Request-Id=keep) and
// the workers log under it and answer with it, so one id finds a request's lines in every log.
package requestid

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/http"
)

// Header is the header that carries the id.
const Header = "X-Request-Id"

// maxLength: a longer id from a client is replaced (llm_ops/logs.py accepts the same ids).
const maxLength = 128

// Config of the middleware (nothing to configure).
type Config struct{}

// CreateConfig returns the default configuration.
func CreateConfig() *Config { return &Config{} }

type requestID struct {
	next http.Handler
}

// New creates the middleware.
func New(_ context.Context, next http.Handler, _ *Config, _ string) (http.Handler, error) {
	return &requestID{next: next}, nil
}

func (m *requestID) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	if !valid(req.Header.Get(Header)) {
		req.Header.Set(Header, newID())
	}
	m.next.ServeHTTP(rw, req)
}

// valid: 1 to maxLength printable ASCII characters, no spaces.
func valid(id string) bool {
	if id == "" || len(id) > maxLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < '!' || id[i] > '~' {
			return false
		}
	}
	return true
}

// newID: 16 random bytes in hex, the shape of the ids the workers make (uuid4().hex).
func newID() string {
	var id [16]byte
	_, _ = rand.Read(id[:])
	return hex.EncodeToString(id[:])
}
