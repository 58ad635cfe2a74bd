package tether_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"

	"github.com/tetherws/tether"
)

// echoSession is a Handler's serve function: it echoes every message of one
// client, over whichever transport the client is on, until the session ends.
func echoSession(ctx context.Context, s *tether.Session) {
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

// startLoopback serves h on 127.0.0.1 and returns the server and its ws:// URL.
func startLoopback(h http.Handler) (*httptest.Server, string) {
	srv := httptest.NewUnstartedServer(h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	srv.Listener = ln
	srv.Start()
	return srv, "ws://" + ln.Addr().String()
}

func ExampleNewHandler() {
	h := tether.NewHandler(echoSession)
	srv, url := startLoopback(h)
	// Deferred calls run last first: the client closes, then the Handler
	// ends its sessions and waits for their serve functions, then the
	// listener goes.
	defer srv.Close()
	defer h.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A tether client offers the tether.v1 subprotocol by itself; a tether
	// Handler takes it up, and the Conn runs in session mode.
	c, err := tether.Dial(ctx, url)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.CloseNow()

	if err := c.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
		fmt.Println("write:", err)
		return
	}
	_, p, err := c.Read(ctx)
	if err != nil {
		fmt.Println("read:", err)
		return
	}
	fmt.Println(string(p), "over", c.Transport(), "in", c.Subprotocol())
	fmt.Println("close:", c.Close(websocket.StatusNormalClosure, "done"))
	// Output:
	// hello over websocket in tether.v1
	// close: <nil>
}

// stripUpgrade plays a proxy that does not pass WebSocket: it removes the
// headers of the Upgrade handshake, so the Handler answers 426 instead of
// 101. Polling requests go through.
func stripUpgrade(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Header.Del("Upgrade")
		r.Header.Del("Connection")
		next.ServeHTTP(w, r)
	})
}

func ExampleWithFallback() {
	h := tether.NewHandler(echoSession)
	srv, url := startLoopback(stripUpgrade(h))
	defer srv.Close()
	defer h.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// After three handshakes in a row that say the path blocks WebSocket,
	// the Conn carries its session over HTTP long polling on the same URL
	// (""), and probes WebSocket in the background to move back.
	c, err := tether.Dial(ctx, url,
		tether.WithFallback(""),
		tether.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(10 * time.Millisecond) }),
	)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.CloseNow()
	fmt.Println("transport:", c.Transport())

	if err := c.Write(ctx, websocket.MessageText, []byte("hello")); err != nil {
		fmt.Println("write:", err)
		return
	}
	_, p, err := c.Read(ctx)
	if err != nil {
		fmt.Println("read:", err)
		return
	}
	fmt.Println(string(p))
	fmt.Println("close:", c.Close(websocket.StatusNormalClosure, "done"))
	// Output:
	// transport: polling
	// hello
	// close: <nil>
}
