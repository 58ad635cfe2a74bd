// Command resubscribe shows a plain-mode feed client that subscribes again
// after every reconnect.
//
// The server is a plain coder/websocket feed, as a market-data or
// notification service would be: a client sends {"op":"subscribe",...} with
// the topics it wants, and the server pushes a tick for each topic every
// 20 ms on that connection. Subscriptions belong to a connection: a new one
// starts with none. The client subscribes in WithOnConnect, which tether
// runs after every connect and reconnect, before anything else is sent, so
// when the server drops the connection (twice here) the ticks resume on the
// new one by themselves.
//
//	go run ./examples/resubscribe
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/wsjson"
)

func main() {
	timeout := flag.Duration("timeout", 10*time.Second, "give up if the demo takes longer")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "resubscribe:", err)
		os.Exit(1)
	}
}

// request is what the client sends; reply and tick are what the feed sends.
type request struct {
	Op     string   `json:"op"`
	Topics []string `json:"topics"`
}

type message struct {
	Op     string   `json:"op"` // "subscribed" or "tick"
	Topics []string `json:"topics,omitempty"`
	Topic  string   `json:"topic,omitempty"`
	Seq    int      `json:"seq,omitempty"`
	// Conn numbers the feed's connections, so that the client can tell a
	// tick of the new connection from one of the old still in its buffer.
	Conn int `json:"conn"`
}

var topics = []string{"btc-usd", "eth-usd"}

const (
	drops       = 2
	ticksPerRun = 3 // ticks of each topic the client waits for on each connection
)

func run(ctx context.Context, w io.Writer) (err error) {
	out := &printer{w: w}
	feed, err := startFeed()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, feed.close()) }()
	out.printf("feed: serving ticks on %s", feed.addr)

	// The hook runs on every (re)connect: subscribe, and read the feed's
	// confirmation. Writes and Reads with the hook's ctx use the new link
	// directly, ahead of anything queued.
	connects := make(chan int, 8)
	n := 0
	var current atomic.Int64 // the feed's number for the current connection
	subscribe := func(ctx context.Context, c *tether.Conn) error {
		n++
		if err := wsjson.Write(ctx, c, request{Op: "subscribe", Topics: topics}); err != nil {
			return err
		}
		var m message
		if err := wsjson.Read(ctx, c, &m); err != nil {
			return err
		}
		if m.Op != "subscribed" {
			return fmt.Errorf("feed answered %q to subscribe", m.Op)
		}
		current.Store(int64(m.Conn))
		out.printf("connect %d: subscribed to %s", n, strings.Join(m.Topics, ", "))
		connects <- n
		return nil
	}
	c, err := tether.Dial(ctx, "ws://"+feed.addr,
		tether.WithOnConnect(subscribe),
		tether.WithStateHook(func(sc tether.StateChange) {
			if sc.To == tether.Reconnecting {
				out.printf("tether: reconnecting (%v)", sc.Cause)
			}
		}),
		tether.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(50 * time.Millisecond) }),
	)
	if err != nil {
		return err
	}
	defer c.CloseNow()
	if c.Subprotocol() != "" {
		return fmt.Errorf("want plain mode, got %q", c.Subprotocol())
	}

	for conn := 1; conn <= drops+1; conn++ {
		if conn > 1 {
			out.printf("feed: dropping every connection")
			feed.dropAll()
			select {
			case got := <-connects:
				if got != conn {
					return fmt.Errorf("connect %d, want %d", got, conn)
				}
			case <-ctx.Done():
				return fmt.Errorf("waiting for reconnect %d: %w", conn, ctx.Err())
			}
		} else {
			<-connects
		}
		// Ticks flow again on the new connection, for every topic.
		seen := make(map[string]int)
		for done := 0; done < len(topics); {
			var m message
			if err := wsjson.Read(ctx, c, &m); err != nil {
				return err
			}
			if m.Op != "tick" || m.Conn != int(current.Load()) {
				continue // a tick the old connection had delivered
			}
			seen[m.Topic]++
			if seen[m.Topic] == ticksPerRun {
				done++
			}
		}
		out.printf("connect %d: ticks arriving: %s", conn, counts(seen))
	}
	st := c.Stats()
	out.printf("stats: dials=%d reconnects=%d", st.Dials, st.Reconnects)
	return c.Close(websocket.StatusNormalClosure, "bye")
}

func counts(seen map[string]int) string {
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s x%d", k, min(seen[k], ticksPerRun))
	}
	return strings.Join(parts, ", ")
}

// printer serialises lines from several goroutines.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// feed is a plain coder/websocket server: ticks for the topics a
// connection subscribed to, every 20 ms.
type feed struct {
	addr string
	hs   *http.Server
	done chan struct{}

	mu    sync.Mutex
	n     int
	conns map[*websocket.Conn]struct{}
	wg    sync.WaitGroup
}

func startFeed() (*feed, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &feed{addr: ln.Addr().String(), conns: make(map[*websocket.Conn]struct{}), done: make(chan struct{})}
	f.hs = &http.Server{Handler: http.HandlerFunc(f.serve), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		defer close(f.done)
		_ = f.hs.Serve(ln)
	}()
	return f, nil
}

func (f *feed) serve(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	f.mu.Lock()
	f.n++
	id := f.n
	f.conns[c] = struct{}{}
	f.wg.Add(1)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
		_ = c.CloseNow()
		f.wg.Done()
	}()
	ctx := context.Background() // a hijacked connection outlives r's ctx; dropAll ends it

	// Subscriptions belong to this connection only.
	var req request
	if err := wsjson.Read(ctx, c, &req); err != nil || req.Op != "subscribe" {
		return
	}
	if err := wsjson.Write(ctx, c, message{Op: "subscribed", Topics: req.Topics, Conn: id}); err != nil {
		return
	}
	// Keep reading, so that pings are answered and a close is seen.
	ctx = c.CloseRead(ctx)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for seq := 1; ; seq++ {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		for _, topic := range req.Topics {
			if err := wsjson.Write(ctx, c, message{Op: "tick", Topic: topic, Seq: seq, Conn: id}); err != nil {
				return
			}
		}
	}
}

// dropAll cuts every connection without a close handshake, as a crashed
// server or a reset network would.
func (f *feed) dropAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		_ = c.CloseNow()
	}
}

func (f *feed) close() error {
	err := f.hs.Close()
	f.dropAll()
	f.wg.Wait()
	<-f.done
	return err
}
