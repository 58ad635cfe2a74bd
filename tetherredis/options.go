package tetherredis

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/tetherws/tether"
)

// Option configures a Cluster.
type Option func(*options)

type options struct {
	prefix      string
	lease       time.Duration
	callTimeout time.Duration
	logger      *slog.Logger
	err         error // the first invalid option
}

// Defaults, documented on the options that set them.
const (
	DefaultPrefix      = "tether:"
	DefaultLease       = 10 * time.Second
	DefaultCallTimeout = time.Second
)

// minLease keeps a third of the lease, the renewal interval, above the
// store's millisecond resolution with room to spare.
const minLease = 10 * time.Millisecond

var discardLogger = slog.New(slog.DiscardHandler)

func defaultOptions() options {
	return options{
		prefix:      DefaultPrefix,
		lease:       DefaultLease,
		callTimeout: DefaultCallTimeout,
		logger:      discardLogger,
	}
}

func (o *options) invalid(opt, format string, args ...any) {
	if o.err == nil {
		o.err = fmt.Errorf("tether: redis: %s: %s: %w", opt, fmt.Sprintf(format, args...), tether.ErrInvalidOption)
	}
}

// WithPrefix sets the prefix of every key the Cluster writes, so that
// several tether deployments, or other data, can share one Redis. The
// default is "tether:"; an empty prefix keeps the default. On Redis Cluster
// the Lua scripts touch several keys at once, which must hash to one slot:
// give a prefix with a hash tag, such as "{tether}:".
func WithPrefix(prefix string) Option {
	return func(o *options) {
		if prefix != "" {
			o.prefix = prefix
		}
	}
}

// WithLease sets the liveness lease: an instance that has not renewed for
// this long (it crashed, or hangs) is reported dead, and its sessions lost.
// The Handler renews every third of it, and a session's record outlives
// its last renewal by three leases. The default is 10 s; 0 keeps the
// default; a lease under 10 ms is an invalid option.
func WithLease(d time.Duration) Option {
	return func(o *options) {
		switch {
		case d < 0:
			o.invalid("WithLease", "negative lease %v", d)
		case d == 0:
		case d < minLease:
			o.invalid("WithLease", "lease %v is under %v", d, minLease)
		default:
			o.lease = d
		}
	}
}

// WithCallTimeout bounds every call to Redis (and the caller's ctx bounds
// it too): a call that has no answer by then fails with an error wrapping
// tether.ErrClusterUnavailable, whatever the client's own timeouts are. The
// default is 1 s; 0 keeps the default; a negative timeout is an invalid
// option.
func WithCallTimeout(d time.Duration) Option {
	return func(o *options) {
		switch {
		case d < 0:
			o.invalid("WithCallTimeout", "negative timeout %v", d)
		case d > 0:
			o.callTimeout = d
		}
	}
}

// WithLogger sets the logger. The Cluster logs when Redis becomes
// unreachable and when it is back (once per outage, not per call), and when
// sessions were written again or found owned elsewhere. The default
// discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.logger = l
		}
	}
}
