package tether

import (
	"log/slog"
	"time"

	"github.com/coder/websocket"
)

// HandlerOption configures a Handler.
type HandlerOption func(*handlerOptions)

type handlerOptions struct {
	accept      websocket.AcceptOptions
	sessionTTL  time.Duration
	maxSessions int
	replayBytes int
	maxBody     int64
	maxBatch    int
	pollWait    time.Duration
	readLimit   int64
	logger      *slog.Logger
}

// Handler defaults, documented on the options that set them.
const (
	DefaultSessionTTL  = 2 * time.Minute
	DefaultMaxSessions = 10000
	DefaultReplayBytes = 4 << 20
	DefaultMaxBody     = 1 << 20
	DefaultMaxBatch    = 256
	DefaultPollWait    = 25 * time.Second
)

func defaultHandlerOptions() handlerOptions {
	return handlerOptions{
		sessionTTL:  DefaultSessionTTL,
		maxSessions: DefaultMaxSessions,
		replayBytes: DefaultReplayBytes,
		maxBody:     DefaultMaxBody,
		maxBatch:    DefaultMaxBatch,
		pollWait:    DefaultPollWait,
		readLimit:   32768,
		logger:      discardLogger,
	}
}

// WithAcceptOptions passes opts to websocket.Accept, for its Origin checks
// (OriginPatterns, InsecureSkipVerify) and compression. The same Origin
// policy applies to HTTP long polling. tether adds its subprotocol to
// opts.Subprotocols.
func WithAcceptOptions(opts *websocket.AcceptOptions) HandlerOption {
	return func(o *handlerOptions) {
		if opts != nil {
			o.accept = *opts
		}
	}
}

// WithSessionTTL sets how long a session outlives its last link, waiting for
// the client to resume. The default is 2 minutes; 0 keeps the default.
func WithSessionTTL(d time.Duration) HandlerOption {
	return func(o *handlerOptions) {
		if d > 0 {
			o.sessionTTL = d
		}
	}
}

// WithMaxSessions bounds the sessions a Handler holds; a client beyond it is
// refused (503 on polling, close code 1013 on WebSocket). The default is
// 10,000; 0 keeps the default.
func WithMaxSessions(n int) HandlerOption {
	return func(o *handlerOptions) {
		if n > 0 {
			o.maxSessions = n
		}
	}
}

// WithReplayBuffer bounds, in bytes, what a session keeps of the messages
// its client has not acknowledged. While the client is connected a Write
// that does not fit waits for acknowledgements; while it is away, a Write
// that does not fit ends the session with ErrSessionLost. The default is
// 4 MiB; 0 keeps the default; at most 64 MiB (a client reads that much
// ahead of a slow application, and no more).
func WithReplayBuffer(bytes int) HandlerOption {
	return func(o *handlerOptions) {
		if bytes > 0 {
			o.replayBytes = min(bytes, maxReplayBytes)
		}
	}
}

// WithPollLimits bounds HTTP long polling: the largest request body (413
// beyond it), the most frames in one request or response, and how long a
// poll is held when there is nothing to send. Zero values keep the defaults:
// 1 MiB, 256 frames, 25 s.
func WithPollLimits(maxBody int64, maxBatch int, wait time.Duration) HandlerOption {
	return func(o *handlerOptions) {
		if maxBody > 0 {
			o.maxBody = maxBody
		}
		if maxBatch > 0 {
			o.maxBatch = maxBatch
		}
		if wait > 0 {
			o.pollWait = wait
		}
	}
}

// WithHandlerReadLimit sets the largest message a session accepts from its
// client. The default is 32 KiB, as in coder/websocket.
func WithHandlerReadLimit(n int64) HandlerOption {
	return func(o *handlerOptions) {
		if n > 0 {
			o.readLimit = n
		}
	}
}

// WithHandlerLogger sets the Handler's logger; every record carries the
// session id and transport. The default discards everything.
func WithHandlerLogger(l *slog.Logger) HandlerOption {
	return func(o *handlerOptions) {
		if l != nil {
			o.logger = l
		}
	}
}
