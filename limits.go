package tether

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// In session mode each side tells the other, when a link opens, the largest
// message it takes, so that a message the other side could never take is
// refused when it is written, before it is numbered: once numbered, it would
// be replayed on every new link and refused every time. The Handler tells
// its polling limits too, so that the client's batches fit them.
const (
	// headerReadLimit, on a client's WebSocket handshake and polling open,
	// is the client's read limit (see WithReadLimit); absent when it has
	// none.
	headerReadLimit = "Tether-Read-Limit"
	// headerLimits, on the Handler's answers, is
	// "message=N, body=N, batch=N": the largest message the Handler takes
	// (WithHandlerReadLimit), and the largest polling request body and
	// batch (WithPollLimits).
	headerLimits = "Tether-Limits"
)

// peerLimits are the limits a Handler told its client; 0 where it did not.
type peerLimits struct {
	message int64
	body    int64
	batch   int
}

// messageLimit is the largest message the Handler takes, -1 when it did
// not say.
func (l *peerLimits) messageLimit() int64 {
	if l.message == 0 {
		return -1
	}
	return l.message
}

// pollSendSlack is what a polling send carries beside one message: its
// frame header, the batch header, an ack.
const pollSendSlack = 512

// messageLimit is the largest message the Handler tells its clients it
// takes: its read limit, and no more than a polling send carries alone,
// since a numbered message may be replayed over either transport.
func (o *handlerOptions) messageLimit() int64 {
	return max(min(o.readLimit, o.maxBody-pollSendSlack), 1)
}

// limitsHeader is the Handler's Tether-Limits value.
func (o *handlerOptions) limitsHeader() string {
	return "message=" + strconv.FormatInt(o.messageLimit(), 10) +
		", body=" + strconv.FormatInt(o.maxBody, 10) +
		", batch=" + strconv.Itoa(o.maxBatch)
}

// parseLimits reads a Tether-Limits header. It takes what it understands:
// unknown names, and values that are not positive numbers, are ignored.
func parseLimits(h http.Header) peerLimits {
	var l peerLimits
	for _, item := range strings.Split(h.Get(headerLimits), ",") {
		name, value, ok := strings.Cut(strings.TrimSpace(item), "=")
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(value, 10, 64)
		if err != nil || n <= 0 {
			continue
		}
		switch name {
		case "message":
			l.message = n
		case "body":
			// Beyond what a window holds, a body limit means nothing, and
			// the client sizes its answers' bound on it.
			l.body = min(n, maxReplayBytes)
		case "batch":
			l.batch = int(min(n, maxWindowMsgs))
		}
	}
	return l
}

// parseReadLimit reads a client's Tether-Read-Limit header: -1 when there
// is none, or it is not a number a read limit can be.
func parseReadLimit(v string) int64 {
	if v == "" {
		return -1
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// checkNumbered refuses, before it is numbered, a message of session mode
// that the peer would refuse on every link: one over limit, the read limit
// the peer told (-1 when it told none), and a text message that is not
// valid UTF-8. peer names the other side in the error.
func checkNumbered(typ websocket.MessageType, p []byte, limit int64, peer string) error {
	if limit >= 0 && int64(len(p)) > limit {
		return fmt.Errorf("tether: write: a message of %d bytes is over the %s's read limit of %d bytes: %w",
			len(p), peer, limit, ErrMessageTooLarge)
	}
	if typ == websocket.MessageText && !utf8.Valid(p) {
		return fmt.Errorf("tether: write: %w", ErrInvalidUTF8)
	}
	return nil
}

// setClientLimit records the read limit the client told on the handshake r
// of a link of s.
func (s *Session) setClientLimit(r *http.Request) {
	s.clientLimit.Store(parseReadLimit(r.Header.Get(headerReadLimit)) + 1)
}
