//go:build unix

package tether_test

import (
	"bytes"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/faultnet"
	"github.com/tetherws/tether/internal/nginxtest"
)

// These tests put a real nginx (Debian package nginx-light) between the Conn
// and a tether.Handler, with the configs in testdata/nginx. They skip when
// nginx is not installed, except in CI (CI=true), where they fail.

// startNginx starts nginx with the config template testdata/nginx/name,
// proxying to upstream (see internal/nginxtest).
func startNginx(t *testing.T, name, upstream string) *nginxtest.Server {
	t.Helper()
	return nginxtest.StartFile(t, filepath.Join("testdata", "nginx", name), upstream)
}

// nginxDial dials like dial, and keeps the Conn's debug log for t.Log if the
// test fails.
func nginxDial(t *testing.T, url string, opts ...tether.Option) *tether.Conn {
	t.Helper()
	var lw lockedWriter
	t.Cleanup(func() { // runs after the Conn's own cleanup has closed it
		if t.Failed() {
			t.Logf("tether log:\n%s", lw.String())
		}
	})
	log := slog.New(slog.NewTextHandler(&lw, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return dial(t, url, append(opts, tether.WithLogger(log))...)
}

type lockedWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *lockedWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// nginxFile returns a file of ng's prefix directory, such as its access log.
func nginxFile(t *testing.T, ng *nginxtest.Server, name string) string {
	t.Helper()
	p, err := ng.File(name)
	require.NoError(t, err)
	return p
}

// A proxy that does not pass Upgrade (field report 3): the Conn moves its
// session onto long polling through nginx, and numbered streams go both
// ways exactly once, while WebSocket probes keep failing.
func TestNginxStripUpgradeFallsBackToPolling(t *testing.T) {
	t.Parallel()
	const n = 500
	got := make(chan string, n+10)
	ss := newSessionServer(t, numbered(n, got))
	ng := startNginx(t, "strip-upgrade.conf.tmpl", ss.Addr())
	ev := newEvents()
	c := nginxDial(t, "ws://"+ng.Addr+"/", tether.WithFallback(""), tether.WithProbeBackoff(fastProbes), ev.option())
	require.Equal(t, tether.Polling, c.Transport())
	sc := ev.next(t, tether.Connected, time.Second)
	require.Equal(t, tether.Polling, sc.Transport)
	var he *tether.HandshakeError
	require.ErrorAs(t, sc.Cause, &he, "the switch reports its cause")
	require.Equal(t, 426, he.StatusCode, "the Handler's answer to a handshake without Upgrade, through nginx")

	streams(t, c, got, n, 100, nil)
	require.Equal(t, tether.Polling, c.Transport(), "probes cannot get through this proxy")
	require.Contains(t, nginxFile(t, ng, "access.log"), "tether=poll", "polls went through nginx")
}

// The proxy is fixed: a Conn on long polling through the stripping nginx
// finds, by probing, that WebSocket now gets through (the faultnet proxy in
// front switches from the stripping nginx to one that passes Upgrade), and
// moves back to WebSocket without losing or repeating a message.
func TestNginxBackToWebSocketWhenProxyFixed(t *testing.T) {
	t.Parallel()
	const n = 900
	got := make(chan string, n+10)
	ss := newSessionServer(t, numbered(n, got))
	strip := startNginx(t, "strip-upgrade.conf.tmpl", ss.Addr())
	pass := startNginx(t, "pass-upgrade.conf.tmpl", ss.Addr())
	p, err := faultnet.Listen(strip.Addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = p.Close() })

	ev := newEvents()
	c := nginxDial(t, "ws://"+p.Addr()+"/", tether.WithFallback(""), tether.WithProbeBackoff(fastProbes), ev.option())
	require.Equal(t, tether.Polling, c.Transport())
	step := 0
	streams(t, c, got, n, 100, func() {
		step++
		if step == 3 {
			// Fix the proxy, and cut the client's kept-alive connections
			// to the stripping one (polls in flight are retried).
			p.SetTarget(pass.Addr)
			p.Reset()
			eventually(t, 10*time.Second, func() bool { return c.Transport() == tether.WebSocket }, "back on WebSocket")
		}
	})
	require.Equal(t, tether.WebSocket, c.Transport())
	var transports []tether.Transport
	for _, sc := range ev.list() {
		require.NotErrorIs(t, sc.Cause, tether.ErrSessionLost)
		if sc.To == tether.Connected {
			transports = append(transports, sc.Transport)
		}
	}
	require.Equal(t, tether.Polling, transports[0], "started on polling: %v", transports)
	require.Equal(t, tether.WebSocket, transports[len(transports)-1], "came back to WebSocket: %v", transports)
	// nginx logs a request when it ends: close the WebSocket, then look.
	require.NoError(t, c.Close(websocket.StatusNormalClosure, ""))
	eventually(t, 5*time.Second, func() bool { return strings.Contains(nginxFile(t, pass, "access.log"), "\" 101 ") },
		"the fixed nginx logs the WebSocket it carried")
}

// quietBehindNginx dials, through the nginx that cuts links idle for 1 s, a
// session echo server, and returns the Conn and a faultnet proxy between
// nginx and the server that counts the links nginx opened to it.
func quietBehindNginx(t *testing.T, heartbeat tether.Option) (*tether.Conn, *faultnet.Proxy, *events, *nginxtest.Server) {
	t.Helper()
	ss := newSessionServer(t, sessionEcho)
	up, err := faultnet.Listen(ss.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = up.Close() })
	ng := startNginx(t, "short-read-timeout.conf.tmpl", up.Addr())
	ev := newEvents()
	c := nginxDial(t, "ws://"+ng.Addr+"/", heartbeat, ev.option())
	require.Equal(t, tether.WebSocket, c.Transport())
	require.Equal(t, tether.Subprotocol, c.Subprotocol())
	return c, up, ev, ng
}

func nginxEchoOnce(t *testing.T, c *tether.Conn, msg string) {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	require.NoError(t, c.Write(ctx, websocket.MessageText, []byte(msg)))
	_, p, err := c.Read(ctx)
	require.NoError(t, err)
	require.Equal(t, msg, string(p))
}

// A heartbeat shorter than nginx's proxy_read_timeout keeps a quiet link
// alive through it: four times the timeout, and not one reconnect.
func TestNginxHeartbeatKeepsQuietLinkAlive(t *testing.T) {
	t.Parallel()
	c, up, ev, _ := quietBehindNginx(t, tether.WithHeartbeat(300*time.Millisecond, 2*time.Second))
	nginxEchoOnce(t, c, "before")

	quiet := time.NewTimer(4 * time.Second)
	defer quiet.Stop()
	for waiting := true; waiting; {
		select {
		case sc := <-ev.ch:
			if sc.To != tether.Connected {
				t.Fatalf("the quiet link went %v -> %v: %v", sc.From, sc.To, sc.Cause)
			}
		case <-quiet.C:
			waiting = false
		}
	}
	st := c.Stats()
	require.Zero(t, st.Reconnects)
	require.EqualValues(t, 1, up.Accepted(), "the server saw one link")
	require.GreaterOrEqual(t, st.PingsAnswered, uint64(5), "pings kept the link busy: %+v", st)
	require.Zero(t, st.PingsFailed)
	nginxEchoOnce(t, c, "after")
	require.EqualValues(t, 1, up.Accepted())
}

// The control: without pings, nginx cuts the same quiet link, and the Conn
// reconnects (and resumes its session). Without it the test above could
// pass with a proxy that never cuts anything.
func TestNginxNoHeartbeatQuietLinkIsCut(t *testing.T) {
	t.Parallel()
	c, up, ev, ng := quietBehindNginx(t, tether.WithHeartbeat(0, 0))
	nginxEchoOnce(t, c, "before")

	ev.next(t, tether.Reconnecting, 5*time.Second)
	ev.next(t, tether.Connected, 5*time.Second)
	require.GreaterOrEqual(t, c.Stats().Reconnects, uint64(1))
	require.GreaterOrEqual(t, up.Accepted(), int64(2), "the server saw a second link")
	require.Contains(t, nginxFile(t, ng, "error.log"), "timed out", "nginx cut the link")
	nginxEchoOnce(t, c, "after")
	for _, sc := range ev.list() {
		require.NotErrorIs(t, sc.Cause, tether.ErrSessionLost)
	}
}
