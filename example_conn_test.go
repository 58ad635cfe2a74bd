package tether_test

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/coder/websocket"

	"github.com/tetherws/tether"
)

// Read returns the server's messages, riding through reconnects, and fails
// only when the Conn is closed for good: here the server ends the
// conversation with 1000, which is not retried.
func ExampleConn_Read() {
	srv, url := startLoopback(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for _, m := range []string{"one", "two", "three"} {
			if err := c.Write(r.Context(), websocket.MessageText, []byte(m)); err != nil {
				return
			}
		}
		c.Close(websocket.StatusNormalClosure, "that is all")
	}))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := tether.Dial(ctx, url)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.CloseNow()

	for {
		_, p, err := c.Read(ctx)
		if err != nil {
			fmt.Println("read:", websocket.CloseStatus(err), "state:", c.State())
			break
		}
		fmt.Println(string(p))
	}
	// Output:
	// one
	// two
	// three
	// read: StatusNormalClosure state: closed
}

// A Write made while the Conn is reconnecting waits in the send queue and
// goes out, in order, on the next link.
func ExampleConn_Write() {
	srv := startExampleServer()
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reconnecting, reconnected := make(chan struct{}, 1), make(chan struct{}, 1)
	c, err := tether.Dial(ctx, srv.URL,
		// Half a second between attempts: the Writes below find the Conn
		// between links.
		tether.WithBackoff(func() backoff.BackOff { return backoff.NewConstantBackOff(500 * time.Millisecond) }),
		tether.WithStateHook(func(sc tether.StateChange) {
			switch {
			case sc.To == tether.Reconnecting:
				reconnecting <- struct{}{}
			case sc.To == tether.Connected && sc.From == tether.Reconnecting:
				reconnected <- struct{}{}
			}
		}),
	)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.CloseNow()

	srv.drop()
	<-reconnecting
	for _, m := range []string{"first", "second"} {
		if err := c.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
			fmt.Println("write:", err)
			return
		}
	}
	fmt.Println("queued:", c.Stats().QueueDepth)
	for range 2 {
		_, p, err := c.Read(ctx)
		if err != nil {
			fmt.Println("read:", err)
			return
		}
		fmt.Println("echo:", string(p))
	}
	// The queue goes out as the link comes up, before the Conn reports it.
	<-reconnected
	fmt.Println("reconnects:", c.Stats().Reconnects)
	// Output:
	// queued: 2
	// echo: first
	// echo: second
	// reconnects: 1
}

// Handler.Stats splits the sessions by the link each has now, and counts
// sessions opened, resumed and lost: what a metrics exporter reads.
func ExampleHandler_Stats() {
	h := tether.NewHandler(echoSession)
	srv, url := startLoopback(h)
	defer srv.Close()
	defer h.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// A tether client (session mode) and a plain WebSocket client, each
	// after one echo.
	c, err := tether.Dial(ctx, url)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.CloseNow()
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer ws.CloseNow()
	for _, conn := range []interface {
		Write(context.Context, websocket.MessageType, []byte) error
		Read(context.Context) (websocket.MessageType, []byte, error)
	}{c, ws} {
		conn.Write(ctx, websocket.MessageText, []byte("hi"))
		conn.Read(ctx)
	}

	st := h.Stats()
	fmt.Printf("sessions=%d on websocket=%d polling=%d away=%d plain clients=%d opened=%d\n",
		st.Sessions, st.OnWebSocket, st.OnPolling, st.Away, st.PlainClients, st.SessionsOpened)
	// Output:
	// sessions=1 on websocket=1 polling=0 away=0 plain clients=1 opened=1
}
