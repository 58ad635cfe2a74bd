package tether_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/tetherws/tether"
)

// Reader and Writer stream a message, as on a *websocket.Conn: here a
// message is written in three pieces and read back into a buffer the
// caller keeps.
func ExampleConn_Reader() {
	h := tether.NewHandler(echoSession)
	srv, url := startLoopback(h)
	defer srv.Close()
	defer h.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := tether.Dial(ctx, url)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.CloseNow()

	w, err := c.Writer(ctx, websocket.MessageText)
	if err != nil {
		fmt.Println("writer:", err)
		return
	}
	for _, piece := range []string{"one message, ", "written in ", "three pieces"} {
		if _, err := io.WriteString(w, piece); err != nil {
			fmt.Println("write:", err)
			return
		}
	}
	if err := w.Close(); err != nil { // the message goes out whole
		fmt.Println("close:", err)
		return
	}

	buf := make([]byte, 0, 512)
	typ, r, err := c.Reader(ctx)
	if err != nil {
		fmt.Println("reader:", err)
		return
	}
	for {
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Println("read:", err)
			return
		}
	}
	fmt.Println(typ, string(buf))
	c.Close(websocket.StatusNormalClosure, "")
	// Output:
	// MessageText one message, written in three pieces
}

// NetConn turns a Conn into a net.Conn for a byte protocol. In session
// mode, as here, the stream survives dropped links and the move to long
// polling: every byte arrives once, in order.
func ExampleNetConn() {
	h := tether.NewHandler(echoSession)
	srv, url := startLoopback(h)
	defer srv.Close()
	defer h.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := tether.Dial(ctx, url)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	nc := tether.NetConn(ctx, c, websocket.MessageBinary)
	defer nc.Close()

	if err := nc.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		fmt.Println("deadline:", err)
		return
	}
	if _, err := io.Copy(nc, strings.NewReader("HELLO\nWORLD\n")); err != nil {
		fmt.Println("write:", err)
		return
	}
	sc := bufio.NewScanner(nc)
	for range 2 {
		if !sc.Scan() {
			fmt.Println("read:", sc.Err())
			return
		}
		fmt.Println(sc.Text())
	}
	// Output:
	// HELLO
	// WORLD
}

// Without a cluster, Shutdown drains: Session.Read returns
// ErrShuttingDown, serve finishes and returns, and what it wrote before
// returning reaches the client before the link closes with 1012.
func ExampleHandler_Shutdown() {
	h := tether.NewHandler(func(ctx context.Context, s *tether.Session) {
		for {
			_, _, err := s.Read(ctx)
			if errors.Is(err, tether.ErrShuttingDown) {
				_ = s.Write(ctx, websocket.MessageText, []byte("goodbye"))
				return
			}
			if err != nil {
				return
			}
		}
	})
	srv, url := startLoopback(h)
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := tether.Dial(ctx, url)
	if err != nil {
		fmt.Println("dial:", err)
		return
	}
	defer c.CloseNow()

	shut := make(chan error, 1)
	go func() { shut <- h.Shutdown(ctx) }()

	_, p, err := c.Read(ctx)
	if err != nil {
		fmt.Println("read:", err)
		return
	}
	fmt.Println(string(p))
	fmt.Println("shutdown:", <-shut)
	// Output:
	// goodbye
	// shutdown: <nil>
}
