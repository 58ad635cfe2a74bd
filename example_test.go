package tether_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"

	"github.com/tetherws/tether"
)

// exampleServer is an in-process coder/websocket echo server on 127.0.0.1.
type exampleServer struct {
	URL string
	srv *httptest.Server

	mu    sync.Mutex
	conns map[*websocket.Conn]struct{}
	wg    sync.WaitGroup // handlers: httptest stops waiting for hijacked conns
}

func startExampleServer() *exampleServer {
	s := &exampleServer{conns: make(map[*websocket.Conn]struct{})}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.echo))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	s.srv.Listener = ln
	s.srv.Start()
	s.URL = "ws://" + ln.Addr().String()
	return s
}

func (s *exampleServer) echo(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		_ = c.CloseNow()
		s.wg.Done()
	}()
	for {
		typ, p, err := c.Read(context.Background())
		if err != nil {
			return
		}
		if err := c.Write(context.Background(), typ, p); err != nil {
			return
		}
	}
}

// drop closes every server-side connection abruptly, as a crash would. The
// client's Dial can return before the handler has recorded its conn, so drop
// waits, briefly, for one to be there.
func (s *exampleServer) drop() {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		if s.closeAll() > 0 {
			return
		}
	}
}

func (s *exampleServer) closeAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		_ = c.CloseNow()
	}
	return len(s.conns)
}

func (s *exampleServer) Close() {
	s.closeAll()
	s.srv.Close()
	s.wg.Wait()
}

// exampleBackoff retries quickly, for examples that drop the connection.
func exampleBackoff() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Millisecond) }

func ExampleDial() {
	srv := startExampleServer()
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// ctx bounds the first connect, retries included, not the Conn.
	c, err := tether.Dial(ctx, srv.URL)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.CloseNow()

	if err := c.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
		fmt.Println("write:", err)
		return
	}
	typ, p, err := c.Read(ctx)
	if err != nil {
		fmt.Println("read:", err)
		return
	}
	fmt.Println(typ, string(p))

	err = c.Close(websocket.StatusNormalClosure, "done")
	fmt.Println("close:", err, "state:", c.State())
	// Output:
	// MessageText hello
	// close: <nil> state: closed
}

func ExampleWithHeartbeat() {
	srv := startExampleServer()
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Ping a link that has been quiet for 50 ms; replace it if the pong
	// takes more than 1 s.
	c, err := tether.Dial(ctx, srv.URL, tether.WithHeartbeat(50*time.Millisecond, time.Second))
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	fmt.Println("pings answered:", waitForPong(ctx, c))
	c.Close(websocket.StatusNormalClosure, "")

	// A timeout of 0 keeps the pings going, to hold proxies open and measure
	// round trips, but never drops a link for a slow pong: for a server that
	// goes quiet during long work.
	c, err = tether.Dial(ctx, srv.URL, tether.WithHeartbeat(50*time.Millisecond, 0))
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	fmt.Println("pings answered:", waitForPong(ctx, c))
	c.Close(websocket.StatusNormalClosure, "")

	// An interval of 0 sends no pings at all. Negative values are refused.
	_, err = tether.Dial(ctx, srv.URL, tether.WithHeartbeat(-time.Second, 0))
	fmt.Println(err)
	// Output:
	// pings answered: true
	// pings answered: true
	// tether: WithHeartbeat: negative interval -1s: tether: invalid option
}

// waitForPong reports whether a heartbeat ping is answered before ctx ends.
func waitForPong(ctx context.Context, c *tether.Conn) bool {
	for c.Stats().PingsAnswered == 0 {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(10 * time.Millisecond):
		}
	}
	return true
}

func ExampleWithStateHook() {
	srv := startExampleServer()
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The hook is called in order, from one goroutine; it should return
	// quickly, so it hands the change on over a buffered channel.
	changes := make(chan tether.StateChange, 16)
	hook := func(sc tether.StateChange) {
		if sc.To == tether.Connected {
			fmt.Printf("%v -> %v (attempt %d)\n", sc.From, sc.To, sc.Attempt)
		} else {
			fmt.Printf("%v -> %v\n", sc.From, sc.To)
		}
		changes <- sc
	}
	c, err := tether.Dial(ctx, srv.URL, tether.WithStateHook(hook), tether.WithBackoff(exampleBackoff))
	if err != nil {
		fmt.Println("dial:", err)
		return
	}

	// The server drops the link; the Conn reconnects by itself.
	srv.drop()
	for sc := range changes {
		if sc.From == tether.Reconnecting && sc.To == tether.Connected {
			break
		}
	}

	c.Close(websocket.StatusNormalClosure, "")
	// Output:
	// connecting -> connected (attempt 1)
	// connected -> reconnecting
	// reconnecting -> connected (attempt 1)
	// connected -> closed
}

func ExampleWithOnConnect() {
	srv := startExampleServer()
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The hook runs after every connect, before queued writes go out: the
	// place to subscribe again. Writes and Reads with its ctx use the new
	// link directly.
	connects := make(chan int, 4)
	n := 0
	onConnect := func(ctx context.Context, c *tether.Conn) error {
		n++
		if err := c.Write(ctx, websocket.MessageText, []byte("subscribe news")); err != nil {
			return err
		}
		_, reply, err := c.Read(ctx)
		if err != nil {
			return err
		}
		fmt.Printf("connect %d: server answered %q\n", n, reply)
		connects <- n
		return nil
	}
	c, err := tether.Dial(ctx, srv.URL, tether.WithOnConnect(onConnect), tether.WithBackoff(exampleBackoff))
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	<-connects

	srv.drop()
	select {
	case <-connects:
	case <-ctx.Done():
		fmt.Println("no reconnect:", ctx.Err())
	}

	c.Close(websocket.StatusNormalClosure, "")
	// Output:
	// connect 1: server answered "subscribe news"
	// connect 2: server answered "subscribe news"
}

func ExampleWithRetryPolicy() {
	// A server whose protocol uses close codes 4000-4099 to mean "come back
	// later": it closes the first link with 4001, then echoes.
	var links sync.WaitGroup
	first := make(chan struct{}, 1)
	first <- struct{}{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		links.Add(1)
		defer links.Done()
		defer c.CloseNow()
		select {
		case <-first:
			c.Close(4001, "rebalancing")
			return
		default:
		}
		for {
			typ, p, err := c.Read(r.Context())
			if err != nil || c.Write(r.Context(), typ, p) != nil {
				return
			}
		}
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv.Listener = ln
	srv.Start()
	defer func() { srv.CloseClientConnections(); srv.Close(); links.Wait() }()

	// tether stops on 4000-4999 by default; this protocol wants a
	// reconnect on its 40xx codes, and the default verdict on anything else.
	policy := func(err error, retry bool) bool {
		if code := websocket.CloseStatus(err); code >= 4000 && code <= 4099 {
			return true
		}
		return retry
	}
	changes := make(chan tether.StateChange, 16)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := tether.Dial(ctx, "ws://"+ln.Addr().String(), tether.WithRetryPolicy(policy),
		tether.WithBackoff(exampleBackoff), tether.WithStateHook(func(sc tether.StateChange) { changes <- sc }))
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.CloseNow()
	for sc := range changes {
		if sc.To == tether.Reconnecting {
			fmt.Println("reconnecting after close code", int(websocket.CloseStatus(sc.Cause)))
		}
		if sc.From == tether.Reconnecting && sc.To == tether.Connected {
			break
		}
	}
	if err := c.Write(ctx, websocket.MessageText, []byte("back")); err != nil {
		fmt.Println("write:", err)
		return
	}
	_, p, err := c.Read(ctx)
	fmt.Println(string(p), err)
	// Output:
	// reconnecting after close code 4001
	// back <nil>
}
