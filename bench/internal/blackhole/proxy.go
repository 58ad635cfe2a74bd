// Package blackhole is a minimal TCP proxy that can turn the links passing
// through it into black holes: the sockets stay open, but nothing gets
// through in either direction, as when a NAT entry or a mobile network
// silently drops a flow. Only a heartbeat can tell such a link is dead.
package blackhole

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
)

// Proxy forwards connections from Addr to a target address.
type Proxy struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	pairs  map[*pair]struct{}
	closed bool
	wg     sync.WaitGroup
}

type pair struct {
	client, upstream net.Conn
	holed            atomic.Bool
}

// Listen starts a Proxy on an ephemeral port of 127.0.0.1 to target.
func Listen(target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("blackhole: %w", err)
	}
	p := &Proxy{ln: ln, target: target, pairs: make(map[*pair]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the "127.0.0.1:port" the proxy listens on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		pr := &pair{client: c, upstream: up}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			_ = c.Close()
			_ = up.Close()
			return
		}
		p.pairs[pr] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(pr, c, up)
		go p.pipe(pr, up, c)
	}
}

// pipe copies src to dst until either side fails, dropping everything once
// the pair is blackholed.
func (p *Proxy) pipe(pr *pair, dst, src net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !pr.holed.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = werr
			}
		}
		if err != nil {
			// Either side ended its socket: end the other one too.
			p.drop(pr)
			return
		}
	}
}

func (p *Proxy) drop(pr *pair) {
	p.mu.Lock()
	delete(p.pairs, pr)
	p.mu.Unlock()
	_ = pr.client.Close()
	_ = pr.upstream.Close()
}

// Blackhole makes every link open now drop all bytes, both ways, from now
// on, while keeping its sockets open. Links made later pass normally.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for pr := range p.pairs {
		pr.holed.Store(true)
	}
}

// Close stops the proxy and closes every link through it.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	pairs := p.pairs
	p.pairs = map[*pair]struct{}{}
	p.mu.Unlock()
	err := p.ln.Close()
	for pr := range pairs {
		_ = pr.client.Close()
		_ = pr.upstream.Close()
	}
	p.wg.Wait()
	return err
}
