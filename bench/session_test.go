package bench

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/tetherws/tether"
)

// sessionServer is an in-process tether.Handler that echoes every message of
// every session, behind a switch that plays a proxy which does not pass
// WebSocket: while blocked it strips the Upgrade and Connection headers, so
// the Handler answers 426 and only long polling gets through.
type sessionServer struct {
	h     *tether.Handler
	srv   *httptest.Server
	block atomic.Bool
}

func sessionEcho(ctx context.Context, s *tether.Session) {
	for {
		typ, p, err := s.Read(ctx)
		if err != nil {
			return
		}
		if err := s.Write(ctx, typ, p); err != nil {
			return
		}
	}
}

func newSessionServer() (*sessionServer, error) {
	ss := &sessionServer{h: tether.NewHandler(sessionEcho)}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ss.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ss.block.Load() {
			r.Header.Del("Upgrade")
			r.Header.Del("Connection")
		}
		ss.h.ServeHTTP(w, r)
	}))
	ss.srv.Listener = ln
	ss.srv.Start()
	return ss, nil
}

// startSessionServer starts a sessionServer for one benchmark.
func startSessionServer(b *testing.B) *sessionServer {
	b.Helper()
	ss, err := newSessionServer()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(ss.close)
	return ss
}

func (ss *sessionServer) URL() string { return "ws://" + ss.srv.Listener.Addr().String() }

func (ss *sessionServer) close() {
	_ = ss.h.Close()
	ss.srv.Close()
}

var (
	sessionOnce sync.Once
	sessionSrv  *sessionServer
)

// sharedSessionServer is the session-mode echo server the session
// benchmarks share, never blocked. It lives as long as the test binary.
func sharedSessionServer(b *testing.B) *sessionServer {
	b.Helper()
	sessionOnce.Do(func() {
		ss, err := newSessionServer()
		if err != nil {
			b.Fatal(err)
		}
		sessionSrv = ss
	})
	if sessionSrv == nil {
		b.Fatal("no session server")
	}
	return sessionSrv
}

func constant(d time.Duration) func() backoff.BackOff {
	return func() backoff.BackOff { return backoff.NewConstantBackOff(d) }
}

// dialSession dials tether against a tether.Handler: session mode, over
// WebSocket.
func dialSession(ctx context.Context, url string) (client, error) {
	c, err := tether.Dial(ctx, url)
	if err != nil {
		return nil, err
	}
	if c.Subprotocol() != tether.Subprotocol {
		_ = c.CloseNow()
		return nil, fmt.Errorf("session dial got subprotocol %q", c.Subprotocol())
	}
	return &tetherClient{c: c}, nil
}

// dialPolling dials tether against a tether.Handler behind a proxy that
// strips Upgrade: session mode, over HTTP long polling.
func dialPolling(ctx context.Context, url string) (client, error) {
	c, err := tether.Dial(ctx, url, tether.WithFallback(""), tether.WithBackoff(constant(10*time.Millisecond)))
	if err != nil {
		return nil, err
	}
	if c.Transport() != tether.Polling {
		_ = c.CloseNow()
		return nil, fmt.Errorf("polling dial is on %v", c.Transport())
	}
	return &tetherClient{c: c}, nil
}

// sessionPair is raw coder/websocket against the plain echo server and
// tether in session mode against the Handler echo: the session targets are
// ratios between them. The order rotates with TETHER_BENCH_ROTATE.
func sessionPair(b *testing.B) []struct {
	d   dialer
	url string
} {
	raw := sharedServer(b).URL()
	ses := sharedSessionServer(b).URL()
	pair := []struct {
		d   dialer
		url string
	}{
		{dialer{name: "raw", dial: dialRaw, ctx: true}, raw},
		{dialer{name: "session", dial: dialSession, ctx: true}, ses},
	}
	if rotation()%2 == 1 {
		pair[0], pair[1] = pair[1], pair[0]
	}
	return pair
}

// BenchmarkSessionEcho is BenchmarkEcho (ctx=bg) with tether in session
// mode: the server is a tether.Handler whose serve loop echoes with
// Session.Read and Session.Write, next to raw against the plain echo server.
func BenchmarkSessionEcho(b *testing.B) {
	for _, size := range []int{16, 1024} {
		for _, api := range apis {
			for _, c := range sessionPair(b) {
				b.Run(fmt.Sprintf("size=%d/ctx=bg/api=%s/client=%s", size, api, c.d.name), func(b *testing.B) {
					echoBench(b, withAPI(c.d, api), c.url, size)
				})
			}
		}
	}
}

// BenchmarkSessionPipeline is BenchmarkPipeline with tether in session mode,
// next to raw against the plain echo server.
func BenchmarkSessionPipeline(b *testing.B) {
	const size = 1024
	for _, api := range apis {
		for _, c := range sessionPair(b) {
			b.Run(fmt.Sprintf("size=%d/api=%s/client=%s", size, api, c.d.name), func(b *testing.B) {
				pipelineBench(b, withAPI(c.d, api), c.url, size)
			})
		}
	}
}

// BenchmarkPolling is pipelined throughput of 1 KiB messages in session mode
// over HTTP long polling (the Handler behind a proxy that strips Upgrade),
// next to session mode over WebSocket against the same Handler.
func BenchmarkPolling(b *testing.B) {
	const size = 1024
	ws := sharedSessionServer(b)
	poll := startSessionServer(b)
	poll.block.Store(true)
	runs := []struct {
		d   dialer
		url string
	}{
		{dialer{name: "session", dial: dialSession, ctx: true}, ws.URL()},
		{dialer{name: "polling", dial: dialPolling, ctx: true}, poll.URL()},
	}
	if rotation()%2 == 1 {
		runs[0], runs[1] = runs[1], runs[0]
	}
	for _, r := range runs {
		b.Run(fmt.Sprintf("size=%d/client=%s", size, r.d.name), func(b *testing.B) {
			pipelineBench(b, r.d, r.url, size)
		})
	}
}

// BenchmarkFallback measures the way to long polling and back. fallback-ms
// is from the start of Dial, on a path that strips Upgrade, to the Conn
// Connected on polling, with a constant 20 ms backoff between handshakes.
// back-ms is from the moment the path passes WebSocket again to the Conn
// back on WebSocket, with a constant 50 ms between probes (so the figure is
// at most one probe delay plus one handshake and the switch).
func BenchmarkFallback(b *testing.B) {
	b.Run("backoff=20ms/probe=50ms/client=tether", func(b *testing.B) {
		ss := startSessionServer(b)
		var down, up time.Duration
		for range b.N {
			ss.block.Store(true)
			ev := make(events, 64)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			start := time.Now()
			c, err := tether.Dial(ctx, ss.URL(),
				tether.WithFallback(""),
				tether.WithBackoff(constant(20*time.Millisecond)),
				tether.WithProbeBackoff(constant(50*time.Millisecond)),
				tether.WithStateHook(ev.hook))
			cancel()
			if err != nil {
				b.Fatal(err)
			}
			sc := ev.wait(b, tether.Connected, 10*time.Second)
			if sc.Transport != tether.Polling {
				b.Fatalf("connected on %v, want polling", sc.Transport)
			}
			down += sc.At.Sub(start)

			unblock := time.Now()
			ss.block.Store(false)
			deadline := unblock.Add(10 * time.Second)
			for c.Transport() != tether.WebSocket {
				if time.Now().After(deadline) {
					b.Fatal("not back on WebSocket within 10 s")
				}
				time.Sleep(100 * time.Microsecond)
			}
			up += time.Since(unblock)
			_ = c.CloseNow()
		}
		b.ReportMetric(ms(down)/float64(b.N), "fallback-ms")
		b.ReportMetric(ms(up)/float64(b.N), "back-ms")
		b.ReportMetric(0, "ns/op")
	})
}
