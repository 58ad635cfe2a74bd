package tether_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/frame"
)

type userKey struct{}

// serve's ctx carries the values of the request that opened the session, on
// both transports, and does not end when that request does.
func TestServeCtxCarriesRequestValues(t *testing.T) {
	t.Parallel()
	for _, tr := range []tether.Transport{tether.WebSocket, tether.Polling} {
		t.Run(tr.String(), func(t *testing.T) {
			t.Parallel()
			type seen struct {
				user  any
				alive bool
			}
			got := make(chan seen, 1)
			h := tether.NewHandler(func(ctx context.Context, s *tether.Session) {
				// Read first: by then the request that opened a polling
				// session has long been answered.
				typ, p, err := s.Read(ctx)
				got <- seen{user: ctx.Value(userKey{}), alive: ctx.Err() == nil}
				if err == nil {
					_ = s.Write(ctx, typ, p)
				}
				<-ctx.Done()
			})
			ss := newClosableServer(t, h)
			inner := ss.srv.Config.Handler
			// Middleware in front of the Handler, putting what it learns
			// from a request in its context. (It lets requests without
			// the header through: the client adds WithHeader's headers to
			// the requests that open a link.)
			ss.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if user := r.Header.Get("X-User"); user != "" {
					r = r.WithContext(context.WithValue(r.Context(), userKey{}, user))
				}
				inner.ServeHTTP(w, r)
			})
			opts := []tether.Option{tether.WithHeader(func(context.Context) (http.Header, error) {
				return http.Header{"X-User": {"alice"}}, nil
			})}
			if tr == tether.Polling {
				ss.setBlock(true)
				opts = append(opts, tether.WithFallback(""))
			}
			c := dial(t, ss.URL(), opts...)
			require.Equal(t, tr, c.Transport())
			lostEcho(t, c, "hi")
			s := <-got
			require.Equal(t, "alice", s.user)
			require.True(t, s.alive, "serve's ctx outlived the request that opened the session")
		})
	}
}

// rawOpen opens a session-mode WebSocket by hand with extra headers and
// returns it with the first frame the Handler sent (a Hello), or the error
// that closed it.
func rawOpen(t *testing.T, url string, h http.Header) (*websocket.Conn, frame.Frame, error) {
	t.Helper()
	ctx := ctxT(t, 5*time.Second)
	ws, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{HTTPHeader: h, Subprotocols: []string{tether.Subprotocol}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = ws.CloseNow() })
	_, b, err := ws.Read(ctx)
	if err != nil {
		return ws, frame.Frame{}, err
	}
	f, err := frame.Decode(b)
	require.NoError(t, err)
	require.Equal(t, frame.Hello, f.Kind)
	return ws, f, nil
}

// rawEcho sends message seq on a session-mode WebSocket opened by hand and
// waits for its echo.
func rawEcho(t *testing.T, ws *websocket.Conn, seq uint64, msg string) {
	t.Helper()
	ctx := ctxT(t, 5*time.Second)
	require.NoError(t, ws.Write(ctx, websocket.MessageBinary, frame.Append(nil, &frame.Frame{Kind: frame.Data, Seq: seq, Payload: []byte(msg)})))
	for {
		_, b, err := ws.Read(ctx)
		require.NoError(t, err)
		f, err := frame.Decode(b)
		require.NoError(t, err)
		if f.Kind == frame.Data {
			require.Equal(t, msg, string(f.Payload))
			return
		}
	}
}

// WithSessionsPerClient counts a client's sessions of every kind under the
// key its function gives, and refuses the one beyond: 429 on polling, 1013
// on WebSocket. Other clients are not affected, and a freed slot is taken
// again.
func TestSessionsPerClient(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t, tether.WithSessionsPerClient(2, func(r *http.Request) string { return r.Header.Get("X-Client") }))
	a := http.Header{"X-Client": {"a"}}
	ws1, _, err := rawOpen(t, g.URL(), a)
	require.NoError(t, err)
	plain, _, err := websocket.Dial(ctxT(t, 5*time.Second), g.URL(), &websocket.DialOptions{HTTPHeader: a})
	require.NoError(t, err)
	defer plain.CloseNow()
	eventually(t, 5*time.Second, func() bool { return g.h.Sessions() == 2 }, "two sessions for a")

	_, _, err = rawOpen(t, g.URL(), a)
	require.Equal(t, websocket.StatusTryAgainLater, websocket.CloseStatus(err), "%v", err)
	resp := g.expect(http.StatusTooManyRequests, http.MethodPost, "?tether=open", a, nil)
	require.Contains(t, string(resp.body), "too many sessions for this client")

	// Another client, and a request without a key, are not limited.
	_, _, err = rawOpen(t, g.URL(), http.Header{"X-Client": {"b"}})
	require.NoError(t, err)
	g.open()
	require.Equal(t, 4, g.h.Sessions())

	// a closes one: a may open another.
	require.NoError(t, ws1.Write(ctxT(t, time.Second), websocket.MessageBinary, frame.Append(nil, &frame.Frame{Kind: frame.Close, Code: 1000})))
	eventually(t, 5*time.Second, func() bool { return g.h.Sessions() == 3 }, "a's session closed")
	g.expect(http.StatusOK, http.MethodPost, "?tether=open", a, nil)
}

// A session that has carried no message waits for its client only for the
// unused-session TTL; one that has carried a message gets the full TTL.
func TestUnusedSessionTTL(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t, tether.WithSessionTTL(10*time.Second), tether.WithUnusedSessionTTL(200*time.Millisecond))
	used := g.open()
	g.echoes(used, 1, "a message")
	g.open() // and never used
	require.Equal(t, 2, g.h.Sessions())
	start := time.Now()
	eventually(t, 5*time.Second, func() bool { return g.h.Sessions() == 1 }, "the unused session expired")
	t.Logf("the unused session expired after %v", time.Since(start))
	require.Less(t, time.Since(start), 3*time.Second)
	g.echoes(used, 2, "the used one lives on")
}

// WithBufferBudget: each session reserves what its buffers may hold. While
// the budget has room beyond what it keeps for the sessions still to come,
// a session gets the full window; then smaller ones; and when the budget
// cannot hold another session at the smallest window, it is refused. The
// window goes to the client in the Hello.
func TestBufferBudget(t *testing.T) {
	t.Parallel()
	t.Run("windows shrink", func(t *testing.T) {
		t.Parallel()
		g := newGarbageServer(t, tether.WithBufferBudget(1_000_000), tether.WithMaxSessions(3), tether.WithReplayBuffer(256<<10))
		var windows []uint64
		for range 3 {
			_, hello, err := rawOpen(t, g.URL(), nil)
			require.NoError(t, err)
			require.EqualValues(t, 4096, hello.WindowMessages)
			windows = append(windows, hello.WindowBytes)
		}
		require.Equal(t, []uint64{256 << 10, 128 << 10, 32 << 10}, windows)
	})
	t.Run("refused", func(t *testing.T) {
		t.Parallel()
		// A million bytes hold ten sessions at the smallest window (32 KiB
		// both ways, and two 32 KiB messages beyond).
		g := newGarbageServer(t, tether.WithBufferBudget(1_000_000), tether.WithMaxSessions(100))
		for i := range 10 {
			_, hello, err := rawOpen(t, g.URL(), nil)
			require.NoError(t, err, "session %d", i)
			require.EqualValues(t, 32<<10, hello.WindowBytes)
		}
		_, _, err := rawOpen(t, g.URL(), nil)
		require.Equal(t, websocket.StatusTryAgainLater, websocket.CloseStatus(err), "%v", err)
		resp, err := g.hc.Post(g.base+"?tether=open", "", nil)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.Equal(t, 10, g.h.Sessions())
	})
}

// A resume with the right session id and a wrong secret does not take the
// session over, on either transport: the client gets a new session, told
// the one it asked for is lost, and the owner's link carries on.
func TestResumeNeedsTheSecret(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	owner, hello, err := rawOpen(t, g.URL(), nil)
	require.NoError(t, err)
	rawEcho(t, owner, 1, "mine")
	id := hex.EncodeToString(hello.Session[:])
	for _, secret := range []string{strings.Repeat("00", 16), hex.EncodeToString(hello.Session[:])} {
		h := http.Header{"Tether-Session": {id}, "Tether-Secret": {secret}, "Tether-Ack": {"0"}}
		_, thief, err := rawOpen(t, g.URL(), h)
		require.NoError(t, err)
		require.Equal(t, frame.StatusLost, thief.Status)
		require.NotEqual(t, hello.Session, thief.Session)
		require.NotEqual(t, hello.Secret, thief.Secret)

		a := g.expect(http.StatusOK, http.MethodPost, "?tether=open", h, nil)
		fs, err := frame.DecodeBatch(a.body, 1, 1<<10)
		require.NoError(t, err)
		require.Equal(t, frame.StatusLost, fs[0].Status)
		require.NotEqual(t, hello.Session, fs[0].Session)
	}
	rawEcho(t, owner, 2, "still mine")
	require.Equal(t, 5, g.h.Sessions())
}

// A resume that acknowledges messages the session never sent is refused on
// both transports, and the session is left as it was.
func TestResumeAckBeyondSentRefused(t *testing.T) {
	t.Parallel()
	g := newGarbageServer(t)
	owner, hello, err := rawOpen(t, g.URL(), nil)
	require.NoError(t, err)
	rawEcho(t, owner, 1, "one") // the Handler has sent one message
	h := http.Header{
		"Tether-Session": {hex.EncodeToString(hello.Session[:])},
		"Tether-Secret":  {hex.EncodeToString(hello.Secret[:])},
		"Tether-Ack":     {"2"},
	}
	_, _, err = rawOpen(t, g.URL(), h)
	require.Equal(t, websocket.StatusProtocolError, websocket.CloseStatus(err), "%v", err)
	g.expect(http.StatusBadRequest, http.MethodPost, "?tether=open", h, nil)
	rawEcho(t, owner, 2, "two")
	require.Equal(t, 1, g.h.Sessions())

	// An ack of what was sent resumes it.
	h.Set("Tether-Ack", "2")
	_, resumed, err := rawOpen(t, g.URL(), h)
	require.NoError(t, err)
	require.Equal(t, frame.StatusResumed, resumed.Status)
}

// recordLogs is a slog.Handler that keeps records as JSON lines.
type recordLogs struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *recordLogs) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *recordLogs) records(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range bytes.Split(l.buf.Bytes(), []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

func (l *recordLogs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Refused requests are logged, at most ten a second, with the status and
// why, and never with what they carried that may be a credential.
func TestRefusalsLoggedRateLimited(t *testing.T) {
	t.Parallel()
	var logs recordLogs
	g := newGarbageServer(t, tether.WithHandlerLogger(slog.New(slog.NewJSONHandler(&logs, nil))))
	p := g.open()
	secret := http.Header{"Tether-Secret": {p.secret}, "Authorization": {"Bearer s3cr3t-t0ken"}}
	for range 30 {
		g.expect(http.StatusNotFound, http.MethodGet, "?tether=poll&ack=0&sid="+strings.Repeat("ab", 16)+"&token=s3cr3t-t0ken", secret, nil)
	}
	recs := logs.records("request refused")
	require.NotEmpty(t, recs)
	require.LessOrEqual(t, len(recs), 10, "rate limited")
	require.EqualValues(t, http.StatusNotFound, recs[0]["status"])
	require.Equal(t, "tether: unknown session", recs[0]["reason"])
	// The next second's first record says how many were not logged.
	eventually(t, 5*time.Second, func() bool {
		g.expect(http.StatusBadRequest, http.MethodGet, "?tether=nope", nil, nil)
		for _, r := range logs.records("request refused") {
			if r["refusals_not_logged"] != nil {
				return true
			}
		}
		return false
	}, "a record counting the refusals not logged")
	require.NotContains(t, logs.String(), "s3cr3t-t0ken")
	require.NotContains(t, logs.String(), p.secret)
}
