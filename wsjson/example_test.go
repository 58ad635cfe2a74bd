package wsjson_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/coder/websocket"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/wsjson"
)

type greeting struct {
	Name string `json:"name"`
	N    int    `json:"n"`
}

// The same two functions serve the server's *tether.Session and the
// client's *tether.Conn (and a raw *websocket.Conn).
func Example() {
	h := tether.NewHandler(func(ctx context.Context, s *tether.Session) {
		for {
			var g greeting
			if err := wsjson.Read(ctx, s, &g); err != nil {
				if errors.Is(err, wsjson.ErrNotText) || errors.Is(err, wsjson.ErrInvalidJSON) {
					// One bad message: say so, and keep the session.
					_ = wsjson.Write(ctx, s, map[string]string{"error": err.Error()})
					continue
				}
				return
			}
			g.N++
			if err := wsjson.Write(ctx, s, g); err != nil {
				return
			}
		}
	})
	srv := httptest.NewUnstartedServer(h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	defer h.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := tether.Dial(ctx, "ws://"+ln.Addr().String())
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.CloseNow()

	if err := wsjson.Write(ctx, c, greeting{Name: "ada", N: 1}); err != nil {
		fmt.Println("write:", err)
		return
	}
	var g greeting
	if err := wsjson.Read(ctx, c, &g); err != nil {
		fmt.Println("read:", err)
		return
	}
	fmt.Printf("%+v\n", g)

	// A message that is not JSON costs only itself.
	_ = c.Write(ctx, websocket.MessageText, []byte("{oops"))
	var reply map[string]string
	if err := wsjson.Read(ctx, c, &reply); err != nil {
		fmt.Println("read:", err)
		return
	}
	fmt.Println(reply["error"])

	_ = wsjson.Write(ctx, c, greeting{Name: "ada", N: 2})
	if err := wsjson.Read(ctx, c, &g); err != nil {
		fmt.Println("read:", err)
		return
	}
	fmt.Printf("%+v\n", g)
	fmt.Println("close:", c.Close(websocket.StatusNormalClosure, ""))
	// Output:
	// {Name:ada N:2}
	// tether: wsjson: message is not valid JSON for the value: invalid character 'o' looking for beginning of object key string
	// {Name:ada N:3}
	// close: <nil>
}

// A binary message is not taken for JSON: Read returns ErrNotText, and the
// next message is read as usual.
func ExampleRead() {
	srv := httptest.NewUnstartedServer(nil)
	srv.Config.Handler = httpHandler(func(ctx context.Context, c *websocket.Conn) {
		_ = c.Write(ctx, websocket.MessageBinary, []byte{0xde, 0xad})
		_ = wsjson.Write(ctx, c, greeting{Name: "grace", N: 7})
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	srv.Listener = ln
	srv.Start()
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := tether.Dial(ctx, "ws://"+ln.Addr().String())
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.CloseNow()

	var g greeting
	err = wsjson.Read(ctx, c, &g)
	fmt.Println(errors.Is(err, wsjson.ErrNotText), err)
	err = wsjson.Read(ctx, c, &g)
	fmt.Printf("%v %+v\n", err, g)
	// Output:
	// true tether: wsjson: binary message, want JSON text (2 bytes)
	// <nil> {Name:grace N:7}
}

// httpHandler accepts a WebSocket, runs f on it, and waits for the client
// to close.
func httpHandler(f func(ctx context.Context, c *websocket.Conn)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		f(r.Context(), c)
		_, _, _ = c.Read(r.Context())
	}
}
