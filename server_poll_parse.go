package tether

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/tetherws/tether/internal/frame"
)

// The parsing of polling requests, apart from the Handler's state, so that
// it can be fuzzed whole: query, headers and body.

// pollRequest is a polling request as parsed.
type pollRequest struct {
	op     string    // pollOpen, pollGet or pollSend
	resume resumeReq // open: the session to resume, if any
	id     [16]byte  // poll and send: the session
	secret [16]byte
	ack    uint64 // poll: what the client has received
}

// pollError is a polling request refused before it reaches a session.
type pollError struct {
	status int
	msg    string
	allow  string // the method to name in Allow, for a 405
}

func (e *pollError) Error() string { return e.msg }

// parsePollRequest checks a polling request's method, query and headers. It
// reads no body.
func parsePollRequest(r *http.Request) (pollRequest, *pollError) {
	var req pollRequest
	q := r.URL.Query()
	req.op = q.Get(pollParam)
	want := http.MethodPost
	switch req.op {
	case "":
		return req, &pollError{status: http.StatusUpgradeRequired, msg: "tether: expected a WebSocket handshake or a tether polling request"}
	case pollGet:
		want = http.MethodGet
	case pollOpen, pollSend:
	default:
		return req, &pollError{status: http.StatusBadRequest, msg: "tether: unknown polling operation"}
	}
	if r.Method != want {
		return req, &pollError{status: http.StatusMethodNotAllowed, msg: "tether: method not allowed", allow: want}
	}
	if req.op == pollOpen {
		rr, err := parseResume(r.Header.Get(headerSession), r.Header.Get(headerSecret), r.Header.Get(headerAck))
		if err != nil {
			return req, &pollError{status: http.StatusBadRequest, msg: err.Error()}
		}
		req.resume = rr
		return req, nil
	}
	if decodeID(q.Get("sid"), &req.id) != nil || decodeID(r.Header.Get(headerSecret), &req.secret) != nil {
		return req, &pollError{status: http.StatusBadRequest, msg: "tether: malformed session id or secret"}
	}
	if req.op == pollGet {
		ack, err := strconv.ParseUint(q.Get("ack"), 10, 64)
		if err != nil {
			return req, &pollError{status: http.StatusBadRequest, msg: "tether: malformed ack"}
		}
		req.ack = ack
	}
	return req, nil
}

// sendError is a send's body refused.
type sendError struct {
	status int
	err    error
}

func (e *sendError) Error() string { return "tether: " + e.err.Error() }
func (e *sendError) Unwrap() error { return e.err }

// parseSendBody decodes the batch a send carries and checks what the
// session's state does not decide: at most maxBatch frames, no Hello, no
// message over readLimit.
func parseSendBody(body []byte, maxBatch int, readLimit int64) ([]frame.Frame, error) {
	fs, err := frame.DecodeBatch(body, maxBatch, int(readLimit)+64)
	if err != nil {
		return nil, &sendError{http.StatusBadRequest, err}
	}
	for i := range fs {
		switch {
		case fs[i].Kind == frame.Hello:
			return nil, &sendError{http.StatusBadRequest, errors.New("unexpected Hello frame")}
		case fs[i].Kind == frame.Data && int64(len(fs[i].Payload)) > readLimit:
			return nil, &sendError{http.StatusRequestEntityTooLarge, fmt.Errorf("message of %d bytes, limit %d", len(fs[i].Payload), readLimit)}
		}
	}
	return fs, nil
}
