package faultnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// dialTimeout bounds how long the proxy waits to connect to the target.
const dialTimeout = 5 * time.Second

// Proxy forwards TCP connections from Addr() to a target and injects faults.
//
// A Proxy is safe for concurrent use by multiple goroutines.
type Proxy struct {
	addr   string
	ctx    context.Context // canceled by Close; aborts pending dials
	cancel context.CancelFunc
	wg     sync.WaitGroup // accept loops and connection handlers

	refuseMu sync.Mutex // serializes Refuse

	mu        sync.Mutex
	target    string
	ln        net.Listener // nil while refusing or after Close
	closed    bool
	conns     map[*conn]struct{}
	changed   chan struct{} // closed and replaced whenever conns changes
	dropAfter int64         // applies to the next accepted connection

	accepted  atomic.Int64
	blackhole atomic.Bool
	delay     atomic.Int64 // time.Duration
	dropped   atomic.Int64 // bytes discarded by Blackhole, for tests
	holed     sync.Map     // target-side local addresses of connections Blackhole cut into
}

// Listen returns a Proxy listening on an ephemeral port of 127.0.0.1 that
// forwards each accepted connection to target. The proxy dials target with
// a 5 second timeout; if the dial fails, the client connection is closed.
func Listen(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultnet: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		addr:    ln.Addr().String(),
		ctx:     ctx,
		cancel:  cancel,
		target:  target,
		ln:      ln,
		conns:   make(map[*conn]struct{}),
		changed: make(chan struct{}),
	}
	p.wg.Go(func() { p.serve(ln) })
	return p, nil
}

// Addr returns the address the proxy listens on, in the form "127.0.0.1:port".
// It stays the same for the lifetime of the proxy.
func (p *Proxy) Addr() string { return p.addr }

// SetTarget makes connections accepted from now on go to target.
// Existing connections are unaffected.
func (p *Proxy) SetTarget(target string) {
	p.mu.Lock()
	p.target = target
	p.mu.Unlock()
}

// Accepted reports the number of connections accepted since Listen.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Active reports the number of connections currently open. A connection
// counts as open from the moment it is accepted until both of its sockets
// have been closed.
func (p *Proxy) Active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// WaitActive waits until Active reports n or ctx is done, in which case it
// returns an error wrapping ctx.Err().
func (p *Proxy) WaitActive(ctx context.Context, n int) error {
	for {
		p.mu.Lock()
		cur, changed := len(p.conns), p.changed
		p.mu.Unlock()
		if cur == n {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("faultnet: waiting for %d active connections, have %d: %w", n, cur, ctx.Err())
		}
	}
}

// Close closes the listener and all connections, and waits for every
// goroutine started by the proxy to return. Calling Close more than once
// has no further effect and returns nil.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	var err error
	if p.ln != nil {
		err = p.ln.Close()
		p.ln = nil
	}
	p.cancel()
	for c := range p.conns {
		c.close(false)
	}
	p.mu.Unlock()
	p.wg.Wait()
	if err != nil {
		return fmt.Errorf("faultnet: %w", err)
	}
	return nil
}

// serve accepts connections from ln until ln is closed.
func (p *Proxy) serve(ln net.Listener) {
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Transient failure such as EMFILE: back off instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-p.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		p.track(nc.(*net.TCPConn))
	}
}

// track registers an accepted connection and starts its handler.
func (p *Proxy) track(client *net.TCPConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		client.Close()
		return
	}
	p.accepted.Add(1)
	ctx, cancel := context.WithCancel(p.ctx)
	c := &conn{
		p:         p,
		client:    client,
		ctx:       ctx,
		cancel:    cancel,
		done:      make(chan struct{}),
		dropAfter: p.dropAfter,
	}
	p.dropAfter = 0
	p.conns[c] = struct{}{}
	p.notifyLocked()
	target := p.target
	p.wg.Go(func() { c.run(target) })
}

// untrack removes a finished connection.
func (p *Proxy) untrack(c *conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.notifyLocked()
	p.mu.Unlock()
}

// notifyLocked wakes WaitActive callers. p.mu must be held.
func (p *Proxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}
