package tether_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
)

// These tests play a hostile or misconfigured server against the client:
// redirects that would carry credentials away, URLs that carry tokens.

// recordingServer answers every request with handle and records what came.
type recordingServer struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []*http.Request
}

func newRecordingServer(t *testing.T, tls bool, handle http.HandlerFunc) *recordingServer {
	t.Helper()
	rs := &recordingServer{}
	rs.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rs.mu.Lock()
		rs.reqs = append(rs.reqs, r.Clone(context.Background()))
		rs.mu.Unlock()
		handle(w, r)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	rs.Listener = ln
	if tls {
		rs.Config.ErrorLog = nil
		rs.StartTLS()
	} else {
		rs.Start()
	}
	t.Cleanup(rs.Close)
	return rs
}

func (rs *recordingServer) requests() []*http.Request {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]*http.Request(nil), rs.reqs...)
}

func redirectTo(target string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}
}

func secretHeader(context.Context) (http.Header, error) {
	return http.Header{"Authorization": {"Bearer s3cret"}}, nil
}

// A handshake redirected to another host is refused, with tether's own
// http.Client and with the user's: nothing reaches the other host, and the
// refusal is permanent.
func TestRedirectToAnotherHostRefused(t *testing.T) {
	t.Parallel()
	for _, own := range []bool{false, true} {
		t.Run(map[bool]string{false: "tether's client", true: "user's client"}[own], func(t *testing.T) {
			t.Parallel()
			evil := newRecordingServer(t, false, func(w http.ResponseWriter, r *http.Request) {})
			front := newRecordingServer(t, false, redirectTo(evil.URL))
			opts := []tether.Option{tether.WithHeader(secretHeader), tether.WithBackoff(constBackoff(10 * time.Millisecond))}
			if own {
				opts = append(opts, tether.WithDialOptions(&websocket.DialOptions{HTTPClient: &http.Client{}}))
			}
			ctx := ctxT(t, 10*time.Second)
			_, err := tether.Dial(ctx, "ws"+strings.TrimPrefix(front.URL, "http")+"/ws", opts...)
			require.ErrorIs(t, err, tether.ErrRedirect)
			require.Contains(t, err.Error(), "another host")
			require.Empty(t, evil.requests(), "the other host got a request")
			require.Len(t, front.requests(), 1, "a refused redirect is permanent")
		})
	}
}

// A handshake redirected from https to http is refused before any request
// goes out in cleartext, whatever client the user gave.
func TestRedirectToCleartextRefused(t *testing.T) {
	t.Parallel()
	var front *recordingServer
	front = newRecordingServer(t, true, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://"+front.Listener.Addr().String()+"/plain", http.StatusFound)
	})
	ctx := ctxT(t, 10*time.Second)
	_, err := tether.Dial(ctx, "wss"+strings.TrimPrefix(front.URL, "https")+"/ws",
		tether.WithHeader(secretHeader), tether.WithDialOptions(&websocket.DialOptions{HTTPClient: front.Client()}))
	require.ErrorIs(t, err, tether.ErrRedirect)
	require.Contains(t, err.Error(), "from https to http")
	require.Len(t, front.requests(), 1)
}

// Long polling refuses the same redirects: a poll URL that redirects to
// another host sends it nothing, and the refusal is permanent.
func TestRedirectOfPollingRefused(t *testing.T) {
	t.Parallel()
	ss := newSessionServer(t, sessionEcho)
	ss.setBlock(true) // WebSocket refused: the Conn goes to polling at once
	evil := newRecordingServer(t, false, func(w http.ResponseWriter, r *http.Request) {})
	front := newRecordingServer(t, false, redirectTo(evil.URL))
	ctx := ctxT(t, 10*time.Second)
	_, err := tether.Dial(ctx, ss.URL(), tether.WithFallback(front.URL+"/poll"), tether.WithHeader(secretHeader),
		tether.WithBackoff(constBackoff(10*time.Millisecond)))
	require.ErrorIs(t, err, tether.ErrRedirect)
	require.Empty(t, evil.requests())
	require.Len(t, front.requests(), 1)
}

// A redirect on the same host and scheme is followed, headers and all.
func TestRedirectOnSameHostFollowed(t *testing.T) {
	t.Parallel()
	s := newTestServer(t, nil)
	mux := http.NewServeMux()
	mux.HandleFunc("/old", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/ws", http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/ws", s.serve)
	front := newRecordingServer(t, false, mux.ServeHTTP)
	c := dial(t, "ws"+strings.TrimPrefix(front.URL, "http")+"/old", tether.WithHeader(secretHeader))
	ctx := ctxT(t, 5*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte("here")))
	_, p, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, "here", string(p))
	s.mu.Lock()
	require.Equal(t, "Bearer s3cret", s.headers[0].Get("Authorization"))
	s.mu.Unlock()
}

// A token in the dial URL's query, or a password in its userinfo, reaches
// neither the errors nor the logs, whatever fails: a refused connection, a
// handshake status, Dial's ctx, the long-polling URL.
func TestCredentialsInURLNeverShown(t *testing.T) {
	t.Parallel()
	refused := optRefusedURL(t)
	host := strings.TrimPrefix(refused, "ws://")
	status := newStatusServer(t, http.StatusServiceUnavailable, 1<<30, "", 0)
	blocked := newSessionServer(t, sessionEcho)
	blocked.setBlock(true)
	for _, tc := range []struct {
		name  string
		url   string
		opts  []tether.Option
		ctx   time.Duration
		shown bool // the error or the log shows the URL, redacted
	}{
		{"refused", "ws://alice:hunter2@" + host + "/ws?token=s3cret&x=1", []tether.Option{tether.WithMaxRetries(2)}, 10 * time.Second, true},
		{"status", strings.Replace(status.URL(), "ws://", "ws://alice:hunter2@", 1) + "/ws?token=s3cret", []tether.Option{tether.WithMaxRetries(2)}, 10 * time.Second, false},
		{"ctx ends", "ws://alice:hunter2@" + host + "/ws?token=s3cret", nil, 200 * time.Millisecond, true},
		{"bad URL", "ws://alice:hunter2@" + host + ":x/ws?token=s3cret", nil, time.Second, true},
		{"polling", blocked.URL(), []tether.Option{tether.WithMaxRetries(3),
			tether.WithFallback("http://alice:hunter2@" + host + "/poll?token=s3cret")}, 10 * time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var logs lockedWriter
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			ctx, cancel := context.WithTimeout(context.Background(), tc.ctx)
			defer cancel()
			opts := append([]tether.Option{tether.WithLogger(log), tether.WithBackoff(constBackoff(10 * time.Millisecond))}, tc.opts...)
			_, err := tether.Dial(ctx, tc.url, opts...)
			require.Error(t, err)
			for _, secret := range []string{"hunter2", "s3cret"} {
				require.NotContains(t, err.Error(), secret)
				require.NotContains(t, logs.String(), secret)
			}
			var ue *url.Error
			if errors.As(err, &ue) {
				require.NotContains(t, ue.URL, "s3cret")
				require.NotContains(t, ue.URL, "hunter2")
			}
			if tc.shown {
				require.Contains(t, err.Error()+logs.String(), "REDACTED", "the URL is still shown, redacted: %v", err)
			}
		})
	}
}
