package tether_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// optDialFast dials with ctx bounded to d and returns how long Dial took and
// its error. A Conn that unexpectedly comes up is closed.
func optDialFast(t *testing.T, d time.Duration, url string, opts ...tether.Option) (time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	type result struct {
		c   *tether.Conn
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		c, err := tether.Dial(ctx, url, opts...)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		took := time.Since(start)
		if r.c != nil {
			_ = r.c.CloseNow()
		}
		return took, r.err
	case <-time.After(d + 5*time.Second):
		t.Fatalf("Dial did not return within 5s after its ctx ended")
		return 0, nil
	}
}

// optRefusedURL returns a ws URL on 127.0.0.1 where nothing listens: a port
// that was free a moment ago.
func optRefusedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return "ws://" + addr
}

func optConstBackoff(d time.Duration) tether.Option {
	return tether.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(d) })
}

func TestOptionBadURL(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{"", "   ", "://bad", "ftp://x", "ws://", "ws:// space", "http//missing-colon", "ws://host:port"} {
		t.Run(strconv.Quote(raw), func(t *testing.T) {
			t.Parallel()
			took, err := optDialFast(t, 5*time.Second, raw)
			require.ErrorIs(t, err, tether.ErrInvalidURL)
			require.Less(t, took, time.Second, "a bad URL fails at once, without retries")
			require.True(t, strings.HasPrefix(err.Error(), "tether: "), "error %q", err)
			if strings.TrimSpace(raw) == "" {
				require.Contains(t, err.Error(), "empty")
			} else {
				require.Contains(t, err.Error(), raw, "the error names the URL")
			}
		})
	}
}

// A URL whose port can never be dialled is as permanent as a missing host:
// Dial should say so at once rather than retry until ctx ends.
func TestOptionBadURLPortOutOfRange(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{"ws://127.0.0.1:65536", "ws://127.0.0.1:99999"} {
		t.Run(raw, func(t *testing.T) {
			t.Parallel()
			took, err := optDialFast(t, 3*time.Second, raw, optConstBackoff(10*time.Millisecond))
			require.Error(t, err)
			require.Less(t, took, time.Second, "Dial retried an impossible port until ctx ended: %v", err)
			require.ErrorIs(t, err, tether.ErrInvalidURL)
			require.Contains(t, err.Error(), raw)
		})
	}
}

func TestOptionInvalid(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		opt  tether.Option
	}{
		{"WithHeartbeat", tether.WithHeartbeat(-time.Second, time.Second)},
		{"WithHeartbeat", tether.WithHeartbeat(time.Second, -time.Second)},
		{"WithHandshakeTimeout", tether.WithHandshakeTimeout(-time.Second)},
		{"WithSendQueue", tether.WithSendQueue(-1)},
		{"WithMaxRetries", tether.WithMaxRetries(-1)},
		{"WithQueueMaxAge", tether.WithQueueMaxAge(-time.Nanosecond)},
		{"WithQueuePolicy", tether.WithQueuePolicy(tether.QueuePolicy(99))},
		{"WithQueuePolicy", tether.WithQueuePolicy(tether.QueuePolicy(-1))},
		{"WithBackoff", tether.WithBackoff(nil)},
		{"WithDialFunc", tether.WithDialFunc(nil)},
		{"WithLogger", tether.WithLogger(nil)},
		{"WithReadLimit", tether.WithReadLimit(-2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// The URL is valid but nothing listens: only validation can make
			// Dial fail at once with ErrInvalidOption.
			took, err := optDialFast(t, 2*time.Second, optRefusedURL(t), tc.opt)
			require.ErrorIs(t, err, tether.ErrInvalidOption)
			require.Contains(t, err.Error(), tc.name, "the error names the option")
			require.True(t, strings.HasPrefix(err.Error(), "tether: "), "error %q", err)
			require.Less(t, took, time.Second)
		})
	}
}

// Zero values are documented modes, not errors.
func TestOptionZeroValuesValid(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	c := dial(t, s.URL(),
		tether.WithHeartbeat(0, 0),
		tether.WithHandshakeTimeout(0),
		tether.WithSendQueue(0),
		tether.WithMaxRetries(0),
		tether.WithQueueMaxAge(0),
		tether.WithQueuePolicy(tether.QueueDropOldest),
		tether.WithReadLimit(-1),
	)
	require.Equal(t, tether.Connected, c.State())
}

func TestOptionStateStrings(t *testing.T) {
	t.Parallel()
	require.Equal(t, "connecting", tether.Connecting.String())
	require.Equal(t, "connected", tether.Connected.String())
	require.Equal(t, "reconnecting", tether.Reconnecting.String())
	require.Equal(t, "closed", tether.Closed.String())
	require.Equal(t, "state(7)", tether.State(7).String())
	require.Equal(t, "state(-1)", tether.State(-1).String())
	require.Equal(t, "websocket", tether.WebSocket.String())
	require.Equal(t, "polling", tether.Polling.String())
	require.Equal(t, "transport(5)", tether.Transport(5).String())
}

// statusServer answers every handshake with status until after requests
// have come, then accepts and echoes. It records the time and headers of
// every request.
type statusServer struct {
	*httptest.Server
	status     int
	retryAfter string
	after      int // requests answered with status before accepting

	mu      sync.Mutex
	times   []time.Time
	headers []http.Header
	reqs    chan struct{}
	wg      sync.WaitGroup
	closeWS websocket.StatusCode // when set, close the first accepted conn with it at once
}

func newStatusServer(t *testing.T, status, after int, retryAfter string, closeWS websocket.StatusCode) *statusServer {
	t.Helper()
	s := &statusServer{status: status, after: after, retryAfter: retryAfter, closeWS: closeWS, reqs: make(chan struct{}, 1024)}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s.Listener = ln
	s.Start()
	t.Cleanup(func() { s.Close(); s.wg.Wait() })
	return s
}

func (s *statusServer) URL() string { return "ws" + strings.TrimPrefix(s.Server.URL, "http") }

func (s *statusServer) serve(w http.ResponseWriter, r *http.Request) {
	// Counted before the hijack, while httptest.Server.Close still waits for
	// this request, so that the cleanup's Wait comes after every Add.
	s.wg.Add(1)
	defer s.wg.Done()
	s.mu.Lock()
	s.times = append(s.times, time.Now())
	s.headers = append(s.headers, r.Header.Clone())
	n := len(s.times)
	s.mu.Unlock()
	s.reqs <- struct{}{}
	if n <= s.after {
		if s.retryAfter != "" {
			w.Header().Set("Retry-After", s.retryAfter)
		}
		http.Error(w, "not now", s.status)
		return
	}
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	defer c.CloseNow()
	if s.closeWS != 0 && n == s.after+1 {
		_ = c.Close(s.closeWS, "restart")
		return
	}
	echo(r.Context(), c)
}

func (s *statusServer) requests() ([]time.Time, []http.Header) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]time.Time(nil), s.times...), append([]http.Header(nil), s.headers...)
}

// A handshake answered 400/401/403/404 is permanent: one request, and Dial
// returns at once with the status.
func TestOptionPermanentHandshakeStatus(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			t.Parallel()
			s := newStatusServer(t, status, 1<<30, "", 0)
			took, err := optDialFast(t, 5*time.Second, s.URL(), optConstBackoff(10*time.Millisecond))
			require.Error(t, err)
			require.Less(t, took, 2*time.Second, "Dial retried a permanent status until ctx ended")
			var he *tether.HandshakeError
			require.True(t, errors.As(err, &he), "errors.As(*HandshakeError) on %v", err)
			require.Equal(t, status, he.StatusCode)
			require.Contains(t, err.Error(), strconv.Itoa(status), "the error says the status")
			require.NotErrorIs(t, err, context.DeadlineExceeded)
			times, _ := s.requests()
			require.Len(t, times, 1, "a permanent status is not retried")
		})
	}
}

// 429 and 503 honour Retry-After: the next attempt waits at least that long,
// even when the backoff says less.
func TestOptionRetryAfterHonoured(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			t.Parallel()
			s := newStatusServer(t, status, 1, "1", 0)
			c := dial(t, s.URL(), optConstBackoff(10*time.Millisecond))
			times, _ := s.requests()
			require.Len(t, times, 2)
			require.GreaterOrEqual(t, times[1].Sub(times[0]), 950*time.Millisecond, "second attempt came before Retry-After")
			require.Equal(t, uint64(1), c.Stats().HandshakeFailures.Status)
			require.Equal(t, uint64(2), c.Stats().Dials)
		})
	}
}

func TestOptionMaxRetriesGivesUp(t *testing.T) {
	t.Parallel()
	t.Run("refused port", func(t *testing.T) {
		t.Parallel()
		took, err := optDialFast(t, 10*time.Second, optRefusedURL(t), optConstBackoff(10*time.Millisecond), tether.WithMaxRetries(3))
		require.ErrorIs(t, err, tether.ErrGaveUp)
		require.ErrorIs(t, err, syscall.ECONNREFUSED, "the give-up error wraps the last cause")
		var gu *tether.GiveUpError
		require.True(t, errors.As(err, &gu), "errors.As(*GiveUpError) on %v", err)
		require.Equal(t, 3, gu.Attempts)
		require.Less(t, took, 5*time.Second)
	})
	t.Run("counted dials", func(t *testing.T) {
		t.Parallel()
		var calls atomic.Int64
		failing := func(ctx context.Context, url string) (*websocket.Conn, *http.Response, error) {
			calls.Add(1)
			return nil, nil, &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}
		}
		_, err := optDialFast(t, 10*time.Second, "ws://127.0.0.1:1", optConstBackoff(time.Millisecond),
			tether.WithDialFunc(failing), tether.WithMaxRetries(3))
		var gu *tether.GiveUpError
		require.True(t, errors.As(err, &gu), "errors.As(*GiveUpError) on %v", err)
		require.Equal(t, 3, gu.Attempts)
		require.Equal(t, int64(3), calls.Load(), "exactly 3 attempts")
	})
}

// When Dial's ctx ends during retries, Dial returns promptly with the ctx's
// error, even in the middle of a long backoff delay.
func TestOptionDialContextEndsDuringRetries(t *testing.T) {
	t.Parallel()
	for _, delay := range []time.Duration{10 * time.Millisecond, time.Hour} {
		t.Run(delay.String(), func(t *testing.T) {
			t.Parallel()
			const ctxTimeout = 300 * time.Millisecond
			took, err := optDialFast(t, ctxTimeout, optRefusedURL(t), optConstBackoff(delay))
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.NotErrorIs(t, err, tether.ErrGaveUp)
			require.GreaterOrEqual(t, took, ctxTimeout)
			require.Less(t, took, ctxTimeout+2*time.Second, "Dial did not return promptly when ctx ended")
		})
	}
}

// WithHeader runs once per attempt, first connect and reconnect alike, and
// its fresh headers reach the server beside the user's own and the conn id.
func TestOptionHeaderPerAttempt(t *testing.T) {
	t.Parallel()
	// Two refused handshakes, then a first link that the server drops at
	// once with 1012: one reconnect.
	s := newStatusServer(t, http.StatusInternalServerError, 2, "", websocket.StatusServiceRestart)
	var calls atomic.Int64
	userHeader := http.Header{"X-User": []string{"u"}}
	c := dial(t, s.URL(),
		tether.WithDialOptions(&websocket.DialOptions{HTTPHeader: userHeader}),
		tether.WithHeader(func(ctx context.Context) (http.Header, error) {
			n := calls.Add(1)
			return http.Header{"Authorization": []string{fmt.Sprintf("Bearer tok-%d", n)}}, nil
		}))

	// 2 refused handshakes, the first link, then the reconnect.
	for range 4 {
		select {
		case <-s.reqs:
		case <-time.After(10 * time.Second):
			t.Fatal("the reconnect did not come")
		}
	}
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("hi")))
	_, got, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "hi", string(got))

	_, headers := s.requests()
	require.Len(t, headers, 4)
	require.Equal(t, int64(4), calls.Load(), "WithHeader runs exactly once per attempt")
	for i, h := range headers {
		require.Equal(t, fmt.Sprintf("Bearer tok-%d", i+1), h.Get("Authorization"), "attempt %d", i+1)
		require.Equal(t, c.ID(), h.Get(tether.ConnIDHeader), "attempt %d", i+1)
		require.Equal(t, "u", h.Get("X-User"), "attempt %d", i+1)
	}
	require.Equal(t, http.Header{"X-User": []string{"u"}}, userHeader, "the user's DialOptions are not modified")
}

// An error from WithHeader is a failed attempt, retried like any other.
func TestOptionHeaderErrorRetried(t *testing.T) {
	t.Parallel()
	s := newStatusServer(t, 0, 0, "", 0)
	var calls atomic.Int64
	c := dial(t, s.URL(), tether.WithHeader(func(ctx context.Context) (http.Header, error) {
		if calls.Add(1) == 1 {
			return nil, errors.New("token service down")
		}
		return nil, nil
	}))
	require.Equal(t, int64(2), calls.Load())
	times, _ := s.requests()
	require.Len(t, times, 1, "the failed attempt made no request")
	require.Equal(t, uint64(1), c.Stats().HandshakeFailures.Hook)
}

// A certificate the client does not trust is permanent: Dial returns at
// once after one attempt.
func TestClassifyUntrustedTLSIsPermanent(t *testing.T) {
	t.Parallel()
	var reqs atomic.Int64
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs.Add(1)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s.Listener = ln
	// The server logs the client's TLS alert; keep the test output clean.
	s.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.StartTLS()
	t.Cleanup(s.Close)

	var dials atomic.Int64
	// Count TLS connection attempts at the client: a plain HTTP client
	// without the test server's certificate in its pool.
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	url := "wss" + strings.TrimPrefix(s.URL, "https")
	took, err := optDialFast(t, 5*time.Second, url, optConstBackoff(10*time.Millisecond),
		tether.WithDialOptions(&websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}}))
	require.Error(t, err)
	require.Less(t, took, 2*time.Second, "an untrusted certificate was retried: %v", err)
	require.Equal(t, int64(1), dials.Load(), "one attempt")
	require.Zero(t, reqs.Load())
}
