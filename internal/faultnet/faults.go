package faultnet

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// relistenTimeout bounds how long Refuse(false) retries a busy port.
const relistenTimeout = 2 * time.Second

// Reset aborts every current connection with a TCP RST on both sides: the
// client and the target both see a "connection reset" error.
// New connections are not affected.
func (p *Proxy) Reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.close(true)
	}
}

// Blackhole turns silent data loss on or off. While on, every existing and
// new connection stays open, but all bytes in both directions are read and
// discarded; new connections are still accepted and dialled. Bytes read
// after Blackhole(false) are forwarded again. Connection closes (FIN and RST)
// are still propagated. A connection that lives through a blackhole has
// lost bytes from the middle of its stream, which TCP alone never does: it
// stands for a middlebox that drops data and carries on.
func (p *Proxy) Blackhole(on bool) { p.blackhole.Store(on) }

// Dropped reports how many bytes Blackhole has discarded since Listen. A
// test waits on it to know that what it wrote is gone.
func (p *Proxy) Dropped() int64 { return p.dropped.Load() }

// DroppedOn reports whether Blackhole has discarded bytes of the connection
// whose target side comes from addr (the remote address the target sees),
// in either direction: such a connection lost bytes from the middle of its
// stream. Connections are remembered for the proxy's life.
func (p *Proxy) DroppedOn(addr string) bool {
	_, ok := p.holed.Load(addr)
	return ok
}

// drop counts n bytes of c discarded by Blackhole.
func (p *Proxy) drop(c *conn, n int) {
	p.dropped.Add(int64(n))
	if c.upAddr != "" {
		p.holed.Store(c.upAddr, struct{}{})
	}
}

// Refuse turns refusal of new connections on or off. When on, the listening
// socket is closed so that connecting to Addr fails with ECONNREFUSED;
// existing connections keep working. When off, the proxy listens on the same
// address again, retrying briefly if the port is busy, and returns an error
// if it cannot. Refuse returns an error if the proxy is closed.
func (p *Proxy) Refuse(on bool) error {
	p.refuseMu.Lock()
	defer p.refuseMu.Unlock()

	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return errors.New("faultnet: proxy closed")
	}
	ln := p.ln
	if on {
		p.ln = nil
	}
	p.mu.Unlock()

	if on {
		if ln != nil {
			ln.Close() // the accept loop returns on net.ErrClosed
		}
		return nil
	}
	if ln != nil {
		return nil // already listening
	}
	ln, err := p.relisten()
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		ln.Close()
		return errors.New("faultnet: proxy closed")
	}
	p.ln = ln
	p.wg.Go(func() { p.serve(ln) })
	return nil
}

// relisten listens on p.addr, retrying for a while if the port is busy.
func (p *Proxy) relisten() (net.Listener, error) {
	deadline := time.Now().Add(relistenTimeout)
	for {
		ln, err := net.Listen("tcp", p.addr)
		if err == nil {
			return ln, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("faultnet: %w", err)
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-t.C:
		case <-p.ctx.Done():
			t.Stop()
			return nil, errors.New("faultnet: proxy closed")
		}
	}
}

// SetDelay delays each chunk read in either direction by d before it is
// forwarded. Chunks keep their order. A d of 0 disables the delay. The new
// value applies to data read after the call.
func (p *Proxy) SetDelay(d time.Duration) { p.delay.Store(int64(max(d, 0))) }

// DropAfter arranges for the next accepted connection to be reset on both
// sides once n bytes have been forwarded from the target to the client.
// A value of n <= 0 cancels a pending DropAfter. Connections accepted
// earlier are not affected.
func (p *Proxy) DropAfter(n int64) {
	p.mu.Lock()
	p.dropAfter = max(n, 0)
	p.mu.Unlock()
}
