package tether

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"
)

// The status and close-code rules of DESIGN.md "Errors", as a table.
func TestClassifyRetryable(t *testing.T) {
	t.Parallel()
	hs := func(code int) error { return &HandshakeError{StatusCode: code, Err: errors.New("expected 101")} }
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}
	reset := &net.OpError{Op: "read", Net: "tcp", Err: &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}}

	for _, tc := range []struct {
		name  string
		err   error
		retry bool
	}{
		{"nil", nil, false},
		{"closed locally", errClosedLocally, false},
		{"closed locally wrapped", fmt.Errorf("tether: write: %w", errClosedLocally), false},

		// Handshake statuses: a wrong URL or missing credentials will not fix
		// themselves; overload, outages and proxies that break the upgrade may.
		{"handshake 400", hs(http.StatusBadRequest), false},
		{"handshake 401", hs(http.StatusUnauthorized), false},
		{"handshake 403", hs(http.StatusForbidden), false},
		{"handshake 404", hs(http.StatusNotFound), false},
		{"handshake 429", hs(http.StatusTooManyRequests), true},
		{"handshake 503", hs(http.StatusServiceUnavailable), true},
		{"handshake 500", hs(http.StatusInternalServerError), true},
		{"handshake 502", hs(http.StatusBadGateway), true},
		{"handshake 426", hs(http.StatusUpgradeRequired), true},
		{"handshake 200", hs(http.StatusOK), true},
		{"handshake 401 wrapped", fmt.Errorf("tether: connect: %w", hs(http.StatusUnauthorized)), false},
		{"handshake 503 wrapped", fmt.Errorf("tether: connect: %w", hs(http.StatusServiceUnavailable)), true},

		// Network errors retry.
		{"ECONNREFUSED", refused, true},
		{"ECONNREFUSED wrapped", fmt.Errorf("tether: dial: %w", refused), true},
		{"ECONNRESET", reset, true},
		{"EOF", io.EOF, true},
		{"unexpected EOF wrapped", fmt.Errorf("failed to read frame header: %w", io.ErrUnexpectedEOF), true},
		{"handshake timeout", fmt.Errorf("tether: %w after 15s: %w", errHandshakeTimeout, context.DeadlineExceeded), true},
		{"heartbeat timeout", ErrHeartbeatTimeout, true},

		// Certificate problems are configuration, not weather.
		{"x509 unknown authority", x509.UnknownAuthorityError{}, false},
		{"x509 hostname", x509.HostnameError{Host: "example.test"}, false},
		{"x509 invalid", x509.CertificateInvalidError{Reason: x509.Expired}, false},
		{"tls verification", &tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}}, false},
		{"tls verification other", &tls.CertificateVerificationError{Err: x509.SystemRootsError{}}, false},
		{"tls verification as dialled", fmt.Errorf("tether: dial: %w", &url.Error{
			Op: "Get", URL: "https://127.0.0.1:1",
			Err: &tls.CertificateVerificationError{Err: x509.HostnameError{Host: "127.0.0.1"}},
		}), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.retry, retryable(tc.err), "retryable(%v)", tc.err)
		})
	}
}

// Close codes from the server, bare, wrapped once and wrapped twice.
func TestClassifyCloseCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code  websocket.StatusCode
		retry bool
	}{
		{websocket.StatusNormalClosure, false}, // 1000: the server ended the conversation
		{websocket.StatusGoingAway, true},      // 1001
		{websocket.StatusAbnormalClosure, true},
		{websocket.StatusInternalError, true},
		{websocket.StatusServiceRestart, true},
		{websocket.StatusTryAgainLater, true},
		{websocket.StatusBadGateway, true},
		{websocket.StatusNoStatusRcvd, true}, // 1005: closed without a code
		{websocket.StatusProtocolError, false},
		{websocket.StatusUnsupportedData, false},
		{websocket.StatusInvalidFramePayloadData, false},
		{websocket.StatusPolicyViolation, false},
		{websocket.StatusMessageTooBig, false},
		{websocket.StatusMandatoryExtension, false},
		{3000, false}, // IANA: Unauthorized
		{3003, false}, // IANA: Forbidden
		{3001, true},
		{3008, true},
		{4000, false},
		{4001, false},
		{4500, false},
		{4999, false},
	} {
		t.Run(strconv.Itoa(int(tc.code)), func(t *testing.T) {
			t.Parallel()
			require.Equal(t, tc.retry, retryableClose(tc.code), "retryableClose")
			ce := websocket.CloseError{Code: tc.code, Reason: "bye"}
			for _, err := range []error{
				ce,
				fmt.Errorf("failed to get reader: %w", ce),
				fmt.Errorf("tether: read: %w", fmt.Errorf("failed to get reader: %w", ce)),
			} {
				require.Equal(t, tc.retry, retryable(err), "retryable(%v)", err)
			}
		})
	}
}

// The user's hook overrides the verdict, sees the default one, and is never
// asked about a local Close.
func TestClassifyRetryPolicyOverride(t *testing.T) {
	t.Parallel()
	type call struct {
		err   error
		retry bool
	}
	var calls []call
	o := defaultOptions()
	WithRetryPolicy(func(err error, retry bool) bool {
		calls = append(calls, call{err, retry})
		return !retry
	})(o)
	require.NoError(t, o.validate())
	c := &Conn{opts: o}

	unauthorized := &HandshakeError{StatusCode: http.StatusUnauthorized}
	require.True(t, c.shouldRetry(unauthorized), "the hook turns a permanent 401 into a retry")
	require.False(t, c.shouldRetry(io.EOF), "the hook turns a retryable EOF into a stop")
	require.Equal(t, []call{{unauthorized, false}, {io.EOF, true}}, calls, "the hook gets the error and the default verdict")

	calls = nil
	require.False(t, c.shouldRetry(errClosedLocally), "a local Close is never retried")
	require.Empty(t, calls, "the hook is not consulted about a local Close")

	plain := &Conn{opts: defaultOptions()}
	require.False(t, plain.shouldRetry(unauthorized))
	require.True(t, plain.shouldRetry(io.EOF))
}

func TestClassifyParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"1", time.Second},
		{"120", 2 * time.Minute},
		{"-5", 0},
		{"garbage", 0},
		{"1.5", 0},
		{"1s", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(90 * time.Second).Format(time.RFC850), 90 * time.Second}, // obsolete form, still valid HTTP
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},                  // in the past
		{now.Format(http.TimeFormat), 0},
		{"Sat, 01 Mar 2025 12:00:90 GMT", 0}, // not a date
	} {
		require.Equal(t, tc.want, parseRetryAfter(tc.in, now), "parseRetryAfter(%q)", tc.in)
	}
}

// A Retry-After too large for a time.Duration must not wrap around into a
// negative or arbitrary delay.
func TestClassifyParseRetryAfterOverflow(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	prev := time.Duration(0)
	// 1e9 s fits in a Duration; 1e10 s and up do not.
	for _, in := range []string{"1000000000", "9999999999", "20000000000", "99999999999", "9223372036854775807"} {
		got := parseRetryAfter(in, now)
		require.GreaterOrEqual(t, got, prev, "parseRetryAfter(%q) = %v: a larger header gave a shorter delay (overflow)", in, got)
		prev = got
	}
}

// The default backoff retries forever (no MaxElapsedTime), with full jitter
// below a 2 s, 4 s, ... schedule capped at 30 s.
func TestBackoffDefault(t *testing.T) {
	t.Parallel()
	const steps = 10_000
	b := defaultBackoff()
	b.Reset()
	seen := make(map[time.Duration]bool, steps)
	var capped []time.Duration
	for n := 1; n <= steps; n++ {
		d := b.NextBackOff()
		require.NotEqual(t, backoff.Stop, d, "step %d: the default backoff stopped", n)
		step := defaultBackoffMax
		if n <= 5 {
			step = defaultBackoffInitial << (n - 1) // 2s, 4s, 8s, 16s, then 32s capped to 30s
			step = min(step, defaultBackoffMax)
		}
		require.GreaterOrEqual(t, d, time.Duration(0), "step %d", n)
		require.Less(t, d, step, "step %d: %v not below %v", n, d, step)
		seen[d] = true
		if n > 5 {
			capped = append(capped, d)
		}
	}
	require.Greater(t, len(seen), steps*99/100, "delays are jittered, not constant")

	lo, hi, sum := capped[0], capped[0], time.Duration(0)
	for _, d := range capped {
		lo, hi, sum = min(lo, d), max(hi, d), sum+d
	}
	mean := sum / time.Duration(len(capped))
	// Uniform in [0, 30s): mean 15 s, standard error ~0.09 s over ~10,000 draws.
	require.Less(t, lo, 3*time.Second, "full jitter reaches near zero")
	require.Greater(t, hi, 27*time.Second, "full jitter reaches near the cap")
	require.InDelta(t, float64(15*time.Second), float64(mean), float64(time.Second), "mean of capped delays")

	// Reset starts the schedule over.
	for range 50 {
		b.Reset()
		require.Less(t, b.NextBackOff(), defaultBackoffInitial, "first delay after Reset")
	}
	// Every new backoff starts below 2 s too, and they are spread.
	first := make(map[time.Duration]bool)
	for range 100 {
		d := defaultBackoff().NextBackOff()
		require.Less(t, d, 2*time.Second)
		first[d] = true
	}
	require.Greater(t, len(first), 90, "first delays of a crowd of clients are spread")
}
