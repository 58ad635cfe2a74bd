// Command metrics exports a tether Conn's and Handler's figures to
// Prometheus, with github.com/prometheus/client_golang, on a /metrics
// endpoint.
//
// It lives in a module of its own, so that the tether library does not
// depend on Prometheus: Conn.Stats, the state hook and Handler.Stats are
// all an exporter needs (collector.go). In one process it starts a
// tether.Handler echo server, dials it, echoes messages, has the server cut
// the connection once (the Conn reconnects and resumes its session), and
// then scrapes its own /metrics endpoint and prints what it got:
//
//   - the Conn: state, transport, dials, reconnects, handshake failures by
//     cause, pings sent/answered/failed, a ping RTT histogram, messages and
//     bytes each way, the send queue, time in each state, and state
//     transitions counted from the state hook;
//   - the Handler: sessions open by transport (websocket, polling, away),
//     sessions opened, resumes, unknown resumes, lost sessions, plain
//     clients.
//
// Run it from this directory (it is a module of its own):
//
//	cd examples/metrics && go run .
//	go run . -hold 1m   # and keep /metrics up for a minute, for curl
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tetherws/tether"
)

func main() {
	timeout := flag.Duration("timeout", 10*time.Second, "give up if the demo takes longer")
	hold := flag.Duration("hold", 0, "keep /metrics up this long after the demo, for curl")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout, *timeout, *hold); err != nil {
		fmt.Fprintln(os.Stderr, "metrics:", err)
		os.Exit(1)
	}
}

const heartbeat = 50 * time.Millisecond

func run(ctx context.Context, w io.Writer, timeout, hold time.Duration) (err error) {
	dctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	// The echo server: a tether.Handler behind an http.Server whose
	// connections can be cut.
	h := tether.NewHandler(echo)
	srv, err := listen(h)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, h.Close(), srv.close()) }()

	changes := newStateChanges()
	reconnected := make(chan struct{}, 1)
	c, err := tether.Dial(dctx, "ws://"+srv.addr,
		tether.WithHeartbeat(heartbeat, time.Second),
		tether.WithStateHook(func(sc tether.StateChange) {
			changes.hook(sc)
			if sc.From == tether.Reconnecting && sc.To == tether.Connected {
				reconnected <- struct{}{}
			}
		}),
		tether.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(20 * time.Millisecond) }),
	)
	if err != nil {
		return err
	}
	defer c.CloseNow()
	rtt := newRTTRecorder(c, heartbeat)
	defer rtt.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(newConnCollector(c), newHandlerCollector(h), changes.total, rtt.hist)
	ms, err := serveMetrics(reg)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, ms.Close()) }()
	fmt.Fprintf(w, "metrics: http://%s/metrics\n", ms.Addr)

	for i := 1; i <= 10; i++ {
		if i == 6 {
			srv.dropAll()
			select {
			case <-reconnected:
			case <-dctx.Done():
				return fmt.Errorf("waiting for the reconnect: %w", dctx.Err())
			}
		}
		msg := fmt.Sprintf("message %d", i)
		if err := c.Write(dctx, websocket.MessageText, []byte(msg)); err != nil {
			return err
		}
		if _, _, err := c.Read(dctx); err != nil {
			return err
		}
	}

	// Wait until the RTT histogram has seen a few pings.
	for {
		text, err := scrape(dctx, ms.Addr)
		if err != nil {
			return err
		}
		if !strings.Contains(text, "tether_conn_ping_rtt_seconds_count{conn_id=\""+c.ID()+"\"} 0") {
			printSamples(w, text)
			break
		}
		select {
		case <-time.After(heartbeat):
		case <-dctx.Done():
			return fmt.Errorf("waiting for a ping: %w", dctx.Err())
		}
	}

	if hold > 0 {
		fmt.Fprintf(w, "metrics: holding http://%s/metrics for %v\n", ms.Addr, hold)
		select {
		case <-time.After(hold):
		case <-ctx.Done():
		}
	}
	return c.Close(websocket.StatusNormalClosure, "")
}

func echo(ctx context.Context, s *tether.Session) {
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

// scrape fetches the metrics as Prometheus would.
func scrape(ctx context.Context, addr string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("scrape: %s", resp.Status)
	}
	return string(b), nil
}

// printSamples prints tether's samples, without the help text and the
// histogram's buckets.
func printSamples(w io.Writer, text string) {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "tether_") && !strings.Contains(l, "_bucket{") {
			fmt.Fprintln(w, l)
		}
	}
}

// metricsServer serves /metrics on 127.0.0.1.
type metricsServer struct {
	Addr string
	hs   *http.Server
	done chan struct{}
}

func serveMetrics(reg *prometheus.Registry) (*metricsServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ms := &metricsServer{Addr: ln.Addr().String(), hs: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, done: make(chan struct{})}
	go func() {
		defer close(ms.done)
		_ = ms.hs.Serve(ln)
	}()
	return ms, nil
}

func (ms *metricsServer) Close() error {
	err := ms.hs.Close()
	<-ms.done
	return err
}

// server is the http.Server in front of the Handler; it tracks every
// connection (WebSockets are hijacked, and the http.Server forgets them)
// so that it can cut them.
type server struct {
	addr string
	hs   *http.Server
	done chan struct{}

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func listen(h http.Handler) (*server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &server{addr: ln.Addr().String(), conns: make(map[net.Conn]struct{}), done: make(chan struct{})}
	s.hs = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ConnState: func(c net.Conn, st http.ConnState) {
			s.mu.Lock()
			defer s.mu.Unlock()
			switch st {
			case http.StateNew:
				s.conns[c] = struct{}{}
			case http.StateClosed:
				delete(s.conns, c)
			}
		},
	}
	go func() {
		defer close(s.done)
		_ = s.hs.Serve(ln)
	}()
	return s, nil
}

// dropAll cuts every connection, as a network failure would.
func (s *server) dropAll() {
	s.mu.Lock()
	conns := s.conns
	s.conns = make(map[net.Conn]struct{})
	s.mu.Unlock()
	for c := range conns {
		_ = c.Close()
	}
}

func (s *server) close() error {
	err := s.hs.Close()
	s.dropAll()
	<-s.done
	return err
}
