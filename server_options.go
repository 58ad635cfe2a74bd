package tether

import (
	"log/slog"
	"net/http"
	"time"

	"github.com/coder/websocket"
)

// HandlerOption configures a Handler.
type HandlerOption func(*handlerOptions)

type handlerOptions struct {
	accept      websocket.AcceptOptions
	sessionTTL  time.Duration
	unusedTTL   time.Duration
	maxSessions int
	perClient   int
	clientKey   func(r *http.Request) string
	replayBytes int
	budget      int64
	maxBody     int64
	maxBatch    int
	pollWait    time.Duration
	readLimit   int64
	hbInterval  time.Duration
	hbTimeout   time.Duration
	logger      *slog.Logger
	cluster     Cluster
	handoffMax  int
}

// Handler defaults, documented on the options that set them.
const (
	DefaultSessionTTL       = 2 * time.Minute
	DefaultUnusedSessionTTL = 10 * time.Second
	DefaultMaxSessions      = 10000
	DefaultReplayBytes      = 4 << 20
	DefaultBufferBudget     = 1 << 30
	DefaultMaxBody          = 1 << 20
	DefaultMaxBatch         = 256
	DefaultPollWait         = 25 * time.Second

	DefaultHandlerHeartbeatInterval = 30 * time.Second
	DefaultHandlerHeartbeatTimeout  = 30 * time.Second

	DefaultHandoffLimit = 1 << 20
)

func defaultHandlerOptions() handlerOptions {
	return handlerOptions{
		sessionTTL:  DefaultSessionTTL,
		unusedTTL:   DefaultUnusedSessionTTL,
		maxSessions: DefaultMaxSessions,
		replayBytes: DefaultReplayBytes,
		budget:      DefaultBufferBudget,
		maxBody:     DefaultMaxBody,
		maxBatch:    DefaultMaxBatch,
		pollWait:    DefaultPollWait,
		readLimit:   32768,
		hbInterval:  DefaultHandlerHeartbeatInterval,
		hbTimeout:   DefaultHandlerHeartbeatTimeout,
		logger:      discardLogger,
		handoffMax:  DefaultHandoffLimit,
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

// WithUnusedSessionTTL sets how long a session that has carried no message
// yet, either way, outlives its last link: much less than WithSessionTTL,
// so that sessions opened and left unused (by a client that opens many and
// never speaks, say) do not hold their slots for long. A session that has
// carried a message gets the full TTL. The default is 10 seconds; 0 keeps
// the default.
func WithUnusedSessionTTL(d time.Duration) HandlerOption {
	return func(o *handlerOptions) {
		if d > 0 {
			o.unusedTTL = d
		}
	}
}

// WithMaxSessions bounds the sessions a Handler holds, plain WebSocket
// clients included; a client beyond it is refused (503 on polling, close
// code 1013 on WebSocket). The default is 10,000; 0 keeps the default.
//
// The bound protects the server's memory, and is also a lever against it:
// anyone who can open sessions can fill them all and keep others out. On
// the open internet, authenticate in middleware in front of the Handler,
// and see WithSessionsPerClient and WithUnusedSessionTTL.
func WithMaxSessions(n int) HandlerOption {
	return func(o *handlerOptions) {
		if n > 0 {
			o.maxSessions = n
		}
	}
}

// WithSessionsPerClient bounds the sessions one client holds at once; a
// client beyond it is refused (429 on polling, close code 1013 on
// WebSocket). clientKey names the client a request comes from: the user
// your authentication middleware put in the request's context, or the
// address a proxy you trust put in a header, or, when clients reach the
// Handler directly, the host of r.RemoteAddr (behind a proxy every client
// shares the proxy's address, which is why there is no default key). A
// request for which clientKey returns "" is not limited. clientKey is
// called once for each new session, from the request that opens it. By
// default there is no per-client limit; n <= 0 or a nil clientKey keeps it
// off.
func WithSessionsPerClient(n int, clientKey func(r *http.Request) string) HandlerOption {
	return func(o *handlerOptions) {
		if n > 0 && clientKey != nil {
			o.perClient, o.clientKey = n, clientKey
		} else {
			o.perClient, o.clientKey = 0, nil
		}
	}
}

// WithBufferBudget bounds, in bytes, what all of a Handler's sessions may
// hold together in their replay buffers and in messages read ahead of
// serve, however their clients behave. Each session reserves the most its
// buffers can hold when it opens: about twice its window plus two of the
// largest messages the read limit allows. A session gets the full window
// (WithReplayBuffer) while the budget has room for it beyond what it keeps
// for WithMaxSessions sessions at the smallest window (32 KiB), smaller
// windows after that, and a session that does not fit even then is refused
// (503 on polling, close code 1013 on WebSocket). The default is 1 GiB,
// which holds 10,000 sessions at the smallest window with the default read
// limit; 0 keeps the default.
func WithBufferBudget(bytes int64) HandlerOption {
	return func(o *handlerOptions) {
		if bytes > 0 {
			o.budget = bytes
		}
	}
}

// WithReplayBuffer sets a session's window: what it keeps, in bytes, of the
// messages its client has not acknowledged, which is also what the client
// may send unacknowledged and what each side reads ahead of a slow
// application (a session's window is told to its client, which keeps to
// it). Every message counts 128 bytes beyond the buffer that holds it, and
// a window holds at most 4096 messages. A Write that does not fit waits
// for acknowledgements, within its ctx: while the client is away, until it
// resumes, or until the session expires (WithSessionTTL) and Write fails
// with ErrSessionLost. The default
// is 4 MiB; 0 keeps the default; at most 64 MiB. WithBufferBudget may
// grant a session less.
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
// client. The default is 32 KiB, as in coder/websocket. The Handler tells it
// to its clients, with WithPollLimits' bounds, in the Tether-Limits header
// of its answers: a tether Conn in session mode refuses a larger message at
// Write, and keeps its polling sends within the bounds. Since a session's
// message may be replayed over long polling, the limit told is at most
// WithPollLimits' body bound less 512 bytes.
func WithHandlerReadLimit(n int64) HandlerOption {
	return func(o *handlerOptions) {
		if n > 0 {
			o.readLimit = n
		}
	}
}

// WithHandlerHeartbeat sets how the Handler watches its clients' WebSocket
// links, in both modes. A link on which nothing has arrived for interval
// (any message, ping or pong from the client is proof of life) is pinged,
// and a link whose pong does not come within timeout is closed; so is a
// link whose client has not taken a write within timeout, which would
// otherwise hold a serve blocked in Write for as long as the client keeps
// its connection open. A session-mode client's session then waits for it
// to resume, as after any drop; a plain client's session ends.
//
// An interval of 0 sends no pings; a timeout of 0 never closes a link for a
// slow pong or a stuck write. Negative values keep the defaults: 30 s and
// 30 s. Choose the interval below the shortest idle timeout of the proxies
// between the Handler and its clients. Long polling needs no heartbeat:
// every poll ends within the poll wait.
func WithHandlerHeartbeat(interval, timeout time.Duration) HandlerOption {
	return func(o *handlerOptions) {
		if interval >= 0 {
			o.hbInterval = interval
		}
		if timeout >= 0 {
			o.hbTimeout = timeout
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

// WithCluster makes the Handler one instance of several behind a load
// balancer, sharing one set of sessions through the directory c (one
// Cluster value per Handler: tetherredis.New, for instance). A session
// stays on the instance that runs its serve function, and its messages in
// that instance's memory; a request for it (a WebSocket resume, a long
// poll) that lands on another instance is forwarded there, over HTTP, one
// hop at most. Shutdown hands sessions over to the instances that stay. See
// the package documentation, "Several instances".
//
// The Handler calls c's methods itself: it renews its sessions every
// c.RenewInterval() from a goroutine of its own, started here and stopped
// by Close or Shutdown, which also take the instance out of the cluster
// (Cluster.Leave). By default a Handler is alone, and its sessions live in
// its memory only.
func WithCluster(c Cluster) HandlerOption {
	return func(o *handlerOptions) { o.cluster = c }
}

// WithHandoffLimit bounds, in bytes, the state of one session that
// Shutdown hands over through the cluster (WithCluster): its ids, counters
// and the messages its client has not acknowledged yet. A session whose
// state is larger is not handed over: it ends, and its client is told the
// session was lost. The default is 1 MiB; 0 keeps the default.
func WithHandoffLimit(bytes int) HandlerOption {
	return func(o *handlerOptions) {
		if bytes > 0 {
			o.handoffMax = bytes
		}
	}
}
