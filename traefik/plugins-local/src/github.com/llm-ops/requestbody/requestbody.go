// Package requestbody reads a request's body into memory before Traefik proxies it.
//
// Why: with a body the client sent with a Content-Length, Go's HTTP transport writes the body to the
// worker and then reads the client's body once more to see it end. A worker answers as soon as it
// has the body; when Traefik has already passed the response headers on to the client by then, Go's
// HTTP/1 server has closed the client's body, that last read fails, and the transport closes the
// connection to the worker: the client gets the headers of a stream and nothing more (about one
// stream in a hundred on a busy machine; golang/go#15527, #40747). Once the body is in memory that
// read cannot fail. Only the request is held, never the response, so streams still stream.
package requestbody

import (
	"bytes"
	"context"
	"io"
	"net/http"
)

// Config of the middleware: bodies up to MaxBytes are read into memory; larger ones are passed on
// as they are (the worker refuses them with 413).
type Config struct {
	MaxBytes int64 `json:"maxBytes,omitempty"`
}

// CreateConfig returns the default configuration.
func CreateConfig() *Config { return &Config{MaxBytes: 1 << 20} }

type requestBody struct {
	next     http.Handler
	maxBytes int64
}

// New creates the middleware.
func New(_ context.Context, next http.Handler, config *Config, _ string) (http.Handler, error) {
	return &requestBody{next: next, maxBytes: config.MaxBytes}, nil
}

func (m *requestBody) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	if req.Body != nil && req.Body != http.NoBody && req.ContentLength > 0 && req.ContentLength <= m.maxBytes {
		// Reading to the end also starts Go's background read that notices a client leaving.
		body, err := io.ReadAll(req.Body)
		if err != nil {
			http.Error(rw, "the request body could not be read", http.StatusBadRequest)
			return
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		req.ContentLength = int64(len(body))
	}
	m.next.ServeHTTP(rw, req)
}
