package faultnet

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// conn is one proxied connection: a client-side and a target-side socket.
type conn struct {
	p         *Proxy
	client    *net.TCPConn
	ctx       context.Context // canceled on close; aborts the dial
	cancel    context.CancelFunc
	done      chan struct{} // closed on close
	dropAfter int64         // reset after this many bytes target->client; 0 = never

	mu     sync.Mutex
	server *net.TCPConn
	closed bool

	upAddr string // the target-side socket's local address, once dialled
}

// chunk is data read from one side, or the error that ended reading.
type chunk struct {
	data []byte
	at   time.Time // when it may be forwarded
	err  error
}

// run dials the target and forwards data both ways until the connection ends.
func (c *conn) run(target string) {
	defer c.p.untrack(c)
	d := net.Dialer{Timeout: dialTimeout}
	nc, err := d.DialContext(c.ctx, "tcp", target)
	if err != nil {
		c.close(false)
		return
	}
	server := nc.(*net.TCPConn)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		server.SetLinger(0)
		server.Close()
		return
	}
	c.server = server
	c.mu.Unlock()
	c.upAddr = server.LocalAddr().String()

	var wg sync.WaitGroup
	up := make(chan chunk, 8)
	down := make(chan chunk, 8)
	wg.Go(func() { c.read(c.client, up) })
	wg.Go(func() { c.write(server, up, 0) })
	wg.Go(func() { c.read(server, down) })
	wg.Go(func() { c.write(c.client, down, c.dropAfter) })
	wg.Wait()
	c.close(false)
}

// read reads from src and queues the data on ch, ending with the read error.
func (c *conn) read(src *net.TCPConn, ch chan<- chunk) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if c.p.blackhole.Load() {
				c.p.drop(c, n)
			} else if !c.send(ch, chunk{
				data: append([]byte(nil), buf[:n]...),
				at:   time.Now().Add(time.Duration(c.p.delay.Load())),
			}) {
				return
			}
		}
		if err != nil {
			c.send(ch, chunk{err: err})
			return
		}
	}
}

// send queues ck on ch. It reports false if the connection was closed first.
func (c *conn) send(ch chan<- chunk, ck chunk) bool {
	select {
	case ch <- ck:
		return true
	case <-c.done:
		return false
	}
}

// write forwards queued data to dst. If limit > 0, the connection is reset
// once limit bytes have been written.
func (c *conn) write(dst *net.TCPConn, ch <-chan chunk, limit int64) {
	var sent int64
	for {
		var ck chunk
		select {
		case ck = <-ch:
		case <-c.done:
			return
		}
		if ck.err != nil {
			if errors.Is(ck.err, io.EOF) {
				dst.CloseWrite() // propagate the half-close
			} else {
				c.close(true) // propagate the reset
			}
			return
		}
		if d := time.Until(ck.at); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-c.done:
				t.Stop()
				return
			}
		}
		if c.p.blackhole.Load() {
			c.p.drop(c, len(ck.data))
			continue
		}
		data, cut := ck.data, false
		if limit > 0 && sent+int64(len(data)) >= limit {
			data, cut = data[:limit-sent], true
		}
		if _, err := dst.Write(data); err != nil {
			c.close(true)
			return
		}
		sent += int64(len(data))
		if cut {
			c.close(true)
			return
		}
	}
}

// close closes both sockets, with a TCP RST if rst is set. It is idempotent.
func (c *conn) close(rst bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	c.cancel()
	close(c.done)
	for _, s := range []*net.TCPConn{c.client, c.server} {
		if s == nil {
			continue
		}
		if rst {
			s.SetLinger(0)
		}
		s.Close()
	}
}
