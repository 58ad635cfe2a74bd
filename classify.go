package tether

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"

	"github.com/coder/websocket"
)

// verdict is tether's decision on a failed attempt or a lost link, and the
// rule that made it, for the log line that ends a Conn.
type verdict struct {
	retry bool
	rule  string
}

// decide applies the classification and the user's override.
func (c *Conn) decide(err error) verdict {
	v := classify(err)
	var he *HandshakeError
	if c.opts.fallback && errors.As(err, &he) && !he.polling &&
		(he.StatusCode == http.StatusBadRequest || fallsBackAtOnce(err)) {
		v = verdict{true, "with WithFallback, a handshake refused on the way is tried over long polling"}
	}
	if c.opts.retryHook != nil && !isClosedLocally(err) {
		retry := c.opts.retryHook(err, v.retry)
		v = verdict{retry, fmt.Sprintf("WithRetryPolicy returned %v (tether's rule: %s)", retry, v.rule)}
	}
	return v
}

// shouldRetry reports decide's verdict.
func (c *Conn) shouldRetry(err error) bool { return c.decide(err).retry }

// retryable is tether's default verdict on a failed attempt or a lost link.
func retryable(err error) bool { return classify(err).retry }

func classify(err error) verdict {
	if err == nil {
		return verdict{false, "no error"}
	}
	if isClosedLocally(err) {
		return verdict{false, "closed by the application"}
	}
	var he *HandshakeError
	if errors.As(err, &he) {
		what := "handshake status " + strconv.Itoa(he.StatusCode)
		if he.polling {
			what = "long-polling status " + strconv.Itoa(he.StatusCode)
		}
		switch he.StatusCode {
		case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
			return verdict{false, what + " is permanent"}
		}
		return verdict{true, what + " is retried"}
	}
	if code := websocket.CloseStatus(err); code != -1 {
		return classifyClose(code)
	}
	if errors.Is(err, ErrMessageTooLarge) {
		return verdict{false, "a message the server refuses on every link is permanent"}
	}
	if errors.Is(err, ErrRedirect) {
		return verdict{false, "a redirect to another host or to cleartext is permanent"}
	}
	var (
		unknownAuthority x509.UnknownAuthorityError
		hostname         x509.HostnameError
		invalid          x509.CertificateInvalidError
		verify           *tls.CertificateVerificationError
	)
	if errors.As(err, &unknownAuthority) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &verify) {
		return verdict{false, "a certificate the client does not trust is permanent"}
	}
	return verdict{true, "network errors are retried"}
}

// retryableClose says whether a close code from the server is worth a
// reconnect.
func retryableClose(code websocket.StatusCode) bool { return classifyClose(code).retry }

func classifyClose(code websocket.StatusCode) verdict {
	n := "close code " + strconv.Itoa(int(code))
	switch {
	case code == websocket.StatusNormalClosure:
		return verdict{false, n + ": the server ended the conversation"}
	case code == websocket.StatusGoingAway,
		code == websocket.StatusAbnormalClosure,
		code == websocket.StatusInternalError,
		code == websocket.StatusServiceRestart,
		code == websocket.StatusTryAgainLater,
		code == websocket.StatusBadGateway,
		code == websocket.StatusNoStatusRcvd:
		return verdict{true, n + " is retried"}
	case code == websocket.StatusProtocolError,
		code == websocket.StatusUnsupportedData,
		code == websocket.StatusInvalidFramePayloadData,
		code == websocket.StatusPolicyViolation,
		code == websocket.StatusMessageTooBig,
		code == websocket.StatusMandatoryExtension:
		return verdict{false, n + " (a policy or protocol error) is permanent"}
	case code == closeUnauthorized || code == closeForbidden:
		// Registered with IANA for frameworks, meaning the HTTP statuses
		// 401 and 403: credentials will not fix themselves.
		return verdict{false, n + " (" + closeName(code) + ") is permanent"}
	case code >= 4000 && code <= 4999:
		return verdict{false, n + ": codes 4000-4999 are permanent unless WithRetryPolicy says otherwise"}
	}
	return verdict{true, n + " is retried"}
}

// The close codes 3000 and 3003, registered with IANA.
const (
	closeUnauthorized websocket.StatusCode = 3000
	closeForbidden    websocket.StatusCode = 3003
)

// closeName is the registered name of a close code, or "".
func closeName(code websocket.StatusCode) string {
	switch code {
	case closeUnauthorized:
		return "Unauthorized"
	case closeForbidden:
		return "Forbidden"
	}
	s, ok := strings.CutPrefix(code.String(), "Status")
	if !ok || strings.HasPrefix(s, "Code(") {
		return ""
	}
	return s
}

// lostError is why a link was lost, when the link's own error is not
// tether's: a close from the server, or a connection that ended without one.
// The latter is reported as close code 1006 (StatusAbnormalClosure), as the
// WebSocket protocol defines it, beside the network error.
type lostError struct {
	transport Transport
	err       error
	abrupt    bool
}

func newLostError(t Transport, err error) *lostError {
	return &lostError{transport: t, err: err, abrupt: websocket.CloseStatus(err) == -1 && endedAbruptly(err)}
}

func (e *lostError) Error() string {
	var ce websocket.CloseError
	switch {
	case e.abrupt:
		return fmt.Sprintf("tether: %v link lost: abnormal closure (1006): %s", e.transport, readable(e.err))
	case errors.As(e.err, &ce):
		s := fmt.Sprintf("tether: %v link closed by the server with %d", e.transport, int(ce.Code))
		if name := closeName(ce.Code); name != "" {
			s += " (" + name + ")"
		}
		if ce.Reason != "" {
			s += ": " + strconv.Quote(ce.Reason)
		}
		return s
	}
	return fmt.Sprintf("tether: %v link lost: %s", e.transport, readable(e.err))
}

// Unwrap returns the link's error and, for a connection that ended without
// a close frame, a websocket.CloseError with code 1006.
func (e *lostError) Unwrap() []error {
	if e.abrupt {
		return []error{websocket.CloseError{Code: websocket.StatusAbnormalClosure, Reason: readable(e.err)}, e.err}
	}
	return []error{e.err}
}

// endedAbruptly reports whether err says the connection went away: an end
// of stream, a reset, a broken pipe, a socket closed under the reader.
func endedAbruptly(err error) bool {
	var errno syscall.Errno
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.As(err, &errno) || errors.As(err, &ne)
}

// readable says what went wrong in the words of the network, not those of
// the layers it went through.
func readable(err error) string {
	var errno syscall.Errno
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "the connection ended without a close frame"
	case errors.As(err, &errno):
		return errno.Error()
	case errors.As(err, &ne) && ne.Timeout():
		return "i/o timeout"
	case errors.Is(err, net.ErrClosed):
		return "the connection was closed"
	}
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err.Error()
		}
		err = u
	}
}
