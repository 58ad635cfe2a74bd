package tether

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
)

// Option configures a Conn. Options are applied in order by Dial.
type Option func(*options)

// QueuePolicy says what Write does while reconnecting when the send queue is
// full.
type QueuePolicy int

// The queue policies.
const (
	// QueueBlock makes Write wait until there is room or its ctx ends.
	QueueBlock QueuePolicy = iota
	// QueueFailFast makes Write return ErrQueueFull at once.
	QueueFailFast
	// QueueDropOldest drops the oldest queued messages to make room.
	QueueDropOldest
)

// Defaults, documented on the options that set them.
const (
	DefaultHeartbeatInterval = 15 * time.Second
	DefaultHeartbeatTimeout  = 10 * time.Second
	DefaultHandshakeTimeout  = 15 * time.Second
	DefaultSendQueueBytes    = 1 << 20
	defaultBackoffInitial    = 2 * time.Second
	defaultBackoffMax        = 30 * time.Second
)

type options struct {
	hbInterval       time.Duration
	hbTimeout        time.Duration
	newBackoff       func() backoff.BackOff
	maxRetries       int
	retryHook        func(err error, retry bool) bool
	handshakeTimeout time.Duration
	dialOpts         *websocket.DialOptions
	dialFunc         func(ctx context.Context, url string) (*websocket.Conn, *http.Response, error)
	header           func(ctx context.Context) (http.Header, error)
	queueBytes       int
	queuePolicy      QueuePolicy
	queueMaxAge      time.Duration
	onConnect        func(ctx context.Context, c *Conn) error
	stateHook        func(StateChange)
	logger           *slog.Logger
	readLimit        int64
	fallback         bool
	pollURL          string
	noSession        bool
	newProbeBackoff  func() backoff.BackOff

	errs []error
}

// discardLogger is the silent default, shared by every Conn and Handler.
var discardLogger = slog.New(slog.DiscardHandler)

func defaultOptions() *options {
	return &options{
		hbInterval:       DefaultHeartbeatInterval,
		hbTimeout:        DefaultHeartbeatTimeout,
		newBackoff:       defaultBackoff,
		newProbeBackoff:  defaultProbeBackoff,
		handshakeTimeout: DefaultHandshakeTimeout,
		queueBytes:       DefaultSendQueueBytes,
		logger:           discardLogger,
		readLimit:        32768,
	}
}

func (o *options) invalid(format string, args ...any) {
	o.errs = append(o.errs, fmt.Errorf("tether: "+format+": %w", append(args, ErrInvalidOption)...))
}

// validate returns the first invalid option, naming it.
func (o *options) validate() error {
	if len(o.errs) > 0 {
		return o.errs[0]
	}
	if o.fallback && o.noSession {
		return fmt.Errorf("tether: WithFallback: long polling needs session mode, which WithSessionMode(false) turned off: %w", ErrInvalidOption)
	}
	return nil
}

// WithHeartbeat sets how often a quiet link is pinged and how long a pong may
// take. Pings go out whenever nothing has arrived for interval; any inbound
// message counts as proof of life. A link whose pong does not come within
// timeout is closed and replaced.
//
// An interval of 0 sends no pings. A timeout of 0 keeps pinging at the
// interval (to hold proxies open and measure round trips) but never closes a
// link for a slow or missing pong. Defaults: 15 s interval, 10 s timeout.
func WithHeartbeat(interval, timeout time.Duration) Option {
	return func(o *options) {
		switch {
		case interval < 0:
			o.invalid("WithHeartbeat: negative interval %v", interval)
		case timeout < 0:
			o.invalid("WithHeartbeat: negative timeout %v", timeout)
		}
		o.hbInterval, o.hbTimeout = interval, timeout
	}
}

// WithBackoff sets the delay policy between connection attempts, for the first
// connect and for every reconnect. newBackOff is called once, by Dial; the
// BackOff it returns (stateful, and not safe for concurrent use) is used by
// the Conn's supervisor alone. It is Reset after a link that stayed up for
// 10 s, and only then: a server that accepts links and drops them at once
// sees the delays grow, as if the outage went on. After a lost link the first
// attempt waits one delay too. A close with 1013 (Try Again Later) makes the
// next attempt wait 5 to 10 s at least, as a Retry-After header does; a
// tether Handler's own 503 with a Retry-After replaces the delay with
// that to twice that (see HandshakeError). A BackOff that returns backoff.Stop ends the Conn with a GiveUpError.
//
// The default is exponential with full jitter: the n-th delay is uniform in
// [0, min(2s·2ⁿ⁻¹, 30s)), retrying forever (no elapsed-time limit).
func WithBackoff(newBackOff func() backoff.BackOff) Option {
	return func(o *options) {
		if newBackOff == nil {
			o.invalid("WithBackoff: nil function")
			return
		}
		o.newBackoff = newBackOff
	}
}

// WithProbeBackoff sets the delays between WebSocket probes while the Conn is
// on long polling (see WithFallback). The default is exponential with full
// jitter, the first probe within 3 s, growing to a minute.
func WithProbeBackoff(newBackOff func() backoff.BackOff) Option {
	return func(o *options) {
		if newBackOff == nil {
			o.invalid("WithProbeBackoff: nil function")
			return
		}
		o.newProbeBackoff = newBackOff
	}
}

// WithMaxRetries limits the connection attempts in one outage (and in Dial)
// to n; then the Conn ends with a GiveUpError. The default, 0, retries until
// Close.
func WithMaxRetries(n int) Option {
	return func(o *options) {
		if n < 0 {
			o.invalid("WithMaxRetries: negative limit %d", n)
		}
		o.maxRetries = n
	}
}

// WithRetryPolicy lets fn override tether's verdict on whether err, the cause
// of a failed attempt or of a lost link, is worth another attempt. fn gets the
// default verdict and returns its own. It is called from the Conn's
// supervisor goroutine and should return quickly.
func WithRetryPolicy(fn func(err error, retry bool) bool) Option {
	return func(o *options) { o.retryHook = fn }
}

// WithHandshakeTimeout bounds each WebSocket handshake, and each request that
// opens or resumes a session over long polling; a handshake that hangs
// longer is one failed attempt. The default is 15 s; 0 means no bound beyond
// the Dial ctx.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.invalid("WithHandshakeTimeout: negative duration %v", d)
		}
		o.handshakeTimeout = d
	}
}

// WithDialOptions passes opts to websocket.Dial for every attempt. tether
// copies them before adding its own headers; OnPongReceived and
// OnPingReceived are kept as they are. An HTTPClient of your own is copied
// too, with a redirect policy that refuses redirects to another host or from
// https to http before yours is asked; it must set its Transport's Proxy to
// go through a proxy (http.ProxyFromEnvironment honours HTTP_PROXY). With
// it, tether cannot watch the socket: a Read or Write whose ctx can end goes
// through a goroutine of its own.
func WithDialOptions(opts *websocket.DialOptions) Option {
	return func(o *options) { o.dialOpts = opts }
}

// WithDialFunc replaces websocket.Dial, to wrap an existing dial. dial gets the
// attempt's ctx (bounded by the handshake timeout) and the URL. WithDialOptions
// and WithHeader do not apply to a custom dial: it sets its own headers, and
// its own redirect policy (tether's refusal of redirects to another host or
// to cleartext cannot apply). Session mode and WithFallback are not available
// with it, and a Write whose ctx can end is made on a goroutine of its own.
func WithDialFunc(dial func(ctx context.Context, url string) (*websocket.Conn, *http.Response, error)) Option {
	return func(o *options) {
		if dial == nil {
			o.invalid("WithDialFunc: nil function")
			return
		}
		o.dialFunc = dial
	}
}

// WithHeader calls fn before every attempt and adds the headers it returns to
// the handshake request, for credentials that expire; on long polling, to
// every request, each with a fresh call, so that middleware in front of the
// Handler can check each one. An error from fn counts as a failed attempt.
// The headers never follow a redirect to another host or to cleartext:
// tether refuses those (ErrRedirect).
func WithHeader(fn func(ctx context.Context) (http.Header, error)) Option {
	return func(o *options) { o.header = fn }
}

// WithSendQueue bounds, in bytes, the messages that Writes made while
// reconnecting may queue; they go out in order after the reconnect. The
// default is 1 MiB. With 0 nothing is queued: Write waits for the next link
// (or fails at once under QueueFailFast).
func WithSendQueue(maxBytes int) Option {
	return func(o *options) {
		if maxBytes < 0 {
			o.invalid("WithSendQueue: negative size %d", maxBytes)
		}
		o.queueBytes = maxBytes
	}
}

// WithQueuePolicy sets what Write does when the send queue is full. The
// default is QueueBlock.
func WithQueuePolicy(p QueuePolicy) Option {
	return func(o *options) {
		if p < QueueBlock || p > QueueDropOldest {
			o.invalid("WithQueuePolicy: unknown policy %d", int(p))
		}
		o.queuePolicy = p
	}
}

// WithQueueMaxAge drops queued messages older than d instead of sending them
// after a reconnect. The default, 0, keeps them however long the outage.
func WithQueueMaxAge(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.invalid("WithQueueMaxAge: negative duration %v", d)
		}
		o.queueMaxAge = d
	}
}

// WithOnConnect runs fn after every connect and reconnect, before queued
// writes go out, to re-subscribe or re-authenticate. Writes made with the ctx
// passed to fn go straight to the new link, ahead of the queue, and Read works
// inside fn. An error from fn counts as a failed attempt: the link is closed
// and retried after backoff.
func WithOnConnect(fn func(ctx context.Context, c *Conn) error) Option {
	return func(o *options) { o.onConnect = fn }
}

// WithStateHook calls fn with every state transition, in order, from one
// goroutine, never while tether holds a lock. The first connect is reported
// as Connecting -> Connected like any other. fn should return quickly: the
// Conn's supervisor waits for it.
func WithStateHook(fn func(StateChange)) Option {
	return func(o *options) { o.stateHook = fn }
}

// WithLogger sets the logger. Every record carries the conn id, transport and
// attempt as attributes. The default discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l == nil {
			o.invalid("WithLogger: nil logger")
			return
		}
		o.logger = l
	}
}

// WithSessionMode(false) keeps the Conn in plain mode against any server:
// the subprotocol tether.v1 is not offered at all. Use it against a server
// that picks whatever subprotocol a client offers first, or refuses those it
// does not know. The default, true, offers tether.v1 last among the
// subprotocols of WithDialOptions, and session mode starts only when a tether
// Handler takes it up. WithFallback needs session mode.
func WithSessionMode(enabled bool) Option {
	return func(o *options) { o.noSession = !enabled }
}

// WithReadLimit sets the largest message Read accepts, as
// websocket.Conn.SetReadLimit does, for every link, long polling included.
// The default is 32 KiB; -1 disables the limit. A larger message ends its
// link; Read returns an error wrapping websocket.ErrMessageTooBig once, and
// the Conn reconnects with backoff (in session mode the server sends the
// message again on the next link). In session mode the limit is told to the
// server on every handshake, and a tether Handler's Session.Write refuses a
// larger message; a limit changed by SetReadLimit is told on the next one.
func WithReadLimit(n int64) Option {
	return func(o *options) {
		if n < -1 {
			o.invalid("WithReadLimit: invalid limit %d", n)
		}
		o.readLimit = n
	}
}

// fullJitter draws each delay uniformly below the next step of a
// deterministic exponential schedule.
type fullJitter struct{ exp *backoff.ExponentialBackOff }

func defaultBackoff() backoff.BackOff {
	exp := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(defaultBackoffInitial),
		backoff.WithMaxInterval(defaultBackoffMax),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0),
		backoff.WithMaxElapsedTime(0),
	)
	return &fullJitter{exp: exp}
}

func (j *fullJitter) NextBackOff() time.Duration {
	d := j.exp.NextBackOff()
	if d <= 0 {
		return d
	}
	return rand.N(d)
}

func (j *fullJitter) Reset() { j.exp.Reset() }
