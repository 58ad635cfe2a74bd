package tether

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

var (
	// ErrInvalidOption is wrapped by the error Dial returns when an option's
	// value is out of range. The message names the option.
	ErrInvalidOption = errors.New("tether: invalid option")

	// ErrInvalidURL is wrapped by the error Dial returns for an empty,
	// malformed or unsupported URL.
	ErrInvalidURL = errors.New("tether: invalid URL")

	// ErrHeartbeatTimeout is the cause recorded when a link's pong did not come
	// within the heartbeat timeout and the link was replaced.
	ErrHeartbeatTimeout = errors.New("tether: heartbeat timeout")

	// ErrQueueFull is returned by Write while reconnecting when the send queue
	// has no room and the queue policy is QueueFailFast.
	ErrQueueFull = errors.New("tether: send queue full")

	// ErrMessageTooLarge is wrapped by the error of a Write whose message
	// could never be sent: larger than the whole send queue (while
	// reconnecting), or, in session mode, larger than the peer's read limit
	// as the peer told it (a Conn's server, a Session's client). Nothing of
	// such a message is sent, and the link is not harmed: once numbered, it
	// would be refused on every link and sent again on the next.
	ErrMessageTooLarge = errors.New("tether: message too large")

	// ErrInvalidUTF8 is wrapped by the error of a Write, in session mode, of
	// a text message that is not valid UTF-8, which WebSocket forbids: the
	// peer would end the session (close code 1007). Nothing of it is sent.
	ErrInvalidUTF8 = errors.New("tether: text message is not valid UTF-8")

	// ErrGaveUp is wrapped by the error that ends a Conn when the retry policy
	// stops (a retry limit, or a backoff that returned backoff.Stop).
	ErrGaveUp = errors.New("tether: gave up reconnecting")

	// ErrInFlight is wrapped, beside ctx's error, by the error of a Write
	// on a plain link whose ctx ended while the message was being sent. The
	// rest of the message goes out after what is already in the socket, so
	// it may still be delivered, unless the link fails first. A Write whose
	// ctx ended before it began sending returns ctx's error alone, and
	// nothing of it was sent.
	ErrInFlight = errors.New("tether: the message is in flight and may still be delivered")

	// ErrSessionLost reports that a session could not be resumed and messages
	// may have been lost in between.
	ErrSessionLost = errors.New("tether: session lost")

	// ErrLinkLost is wrapped, beside the link's own error, by the error of
	// a plain-mode Reader's Read when the link was lost in the middle of
	// its message (the rest of that message is gone; the next Reader gets
	// the next message, on the next link), and by the errors of a NetConn
	// in plain mode once the link it ran on is lost.
	ErrLinkLost = errors.New("tether: link lost")

	// ErrShuttingDown is returned by Session.Read once Handler.Shutdown has
	// begun, so that serve can finish and return; the messages serve did
	// not read are replayed by the client to whoever serves the session
	// next. Session.Write keeps working until serve returns; a Write made
	// after the session was handed over fails with an error wrapping it.
	ErrShuttingDown = errors.New("tether: handler shutting down")
)

// HandshakeError reports a WebSocket handshake that the server answered with
// something other than 101 Switching Protocols.
type HandshakeError struct {
	// StatusCode is the HTTP status of the answer.
	StatusCode int
	// RetryAfter is the server's Retry-After delay, or zero.
	RetryAfter time.Duration
	// Err is the error the dial returned.
	Err error

	// handler is set when the answer carries the Tether-Protocol mark of a
	// tether Handler, rather than coming from a proxy on the way.
	handler bool
	// polling is set for the answer to a long-polling open.
	polling bool
}

func (e *HandshakeError) Error() string {
	s := "tether: handshake answered " + strconv.Itoa(e.StatusCode) + " " + http.StatusText(e.StatusCode)
	if e.RetryAfter > 0 {
		s += " (retry after " + e.RetryAfter.String() + ")"
	}
	return s
}

// Unwrap returns the dial error.
func (e *HandshakeError) Unwrap() error { return e.Err }

// GiveUpError ends a Conn whose retry policy stopped. It wraps ErrGaveUp and
// the last attempt's error.
type GiveUpError struct {
	// Attempts is the number of connection attempts made in this outage.
	Attempts int
	// Err is the last attempt's error.
	Err error
}

func (e *GiveUpError) Error() string {
	return fmt.Sprintf("tether: gave up after %d attempts: %v", e.Attempts, e.Err)
}

// Unwrap returns ErrGaveUp and the last cause, for errors.Is and errors.As.
func (e *GiveUpError) Unwrap() []error { return []error{ErrGaveUp, e.Err} }

// maxRetryAfter caps a server's Retry-After, so that a misconfigured proxy
// cannot park a Conn for a day.
const maxRetryAfter = 10 * time.Minute

// parseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s <= 0 {
			return 0
		}
		d = maxRetryAfter
		if s < int64(maxRetryAfter/time.Second) {
			d = time.Duration(s) * time.Second
		}
	} else if t, err := http.ParseTime(v); err == nil && t.After(now) {
		d = min(t.Sub(now), maxRetryAfter)
	}
	return d
}

// errHandshakeTimeout marks an attempt whose handshake did not finish in time.
var errHandshakeTimeout = errors.New("handshake timed out")

// hookError is the failure of a user hook (WithHeader, WithOnConnect) during
// an attempt.
type hookError struct {
	hook string
	err  error
}

func (e *hookError) Error() string { return "tether: " + e.hook + ": " + e.err.Error() }
func (e *hookError) Unwrap() error { return e.err }
