// Package echo is the WebSocket echo server that every benchmark client talks
// to, in-process or in its own process (cmd/echoserver), so that only the
// client differs between runs.
package echo

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// Server echoes every message back on the link it came from. It can be
// stopped and started again on the same address, to stand in for a server
// restart.
type Server struct {
	mu    sync.Mutex
	addr  string
	srv   *http.Server
	conns map[*websocket.Conn]struct{}
	wg    sync.WaitGroup
}

// Listen starts a Server on addr ("127.0.0.1:0" picks a free port).
func Listen(addr string) (*Server, error) {
	s := &Server{conns: make(map[*websocket.Conn]struct{})}
	if err := s.listen(addr); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	srv := &http.Server{Handler: s}
	s.mu.Lock()
	s.addr, s.srv = ln.Addr().String(), srv
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		_ = srv.Serve(ln)
	}()
	return nil
}

// Addr returns the "127.0.0.1:port" the server listens on.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.addr
}

// URL returns the ws:// URL of the server.
func (s *Server) URL() string { return "ws://" + s.Addr() }

// ServeHTTP accepts a WebSocket and echoes until the link ends. It reads and
// writes with context.Background(), the cheapest path in coder/websocket.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	c.SetReadLimit(1 << 20)
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		_ = c.CloseNow()
	}()
	ctx := context.Background()
	for {
		typ, p, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, p); err != nil {
			return
		}
	}
}

// Conns returns the number of open WebSocket links.
func (s *Server) Conns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Stop closes the listener and drops every link without a close handshake,
// as a crashed or killed server would. It returns when the links were
// dropped.
func (s *Server) Stop() time.Time {
	s.mu.Lock()
	srv := s.srv
	conns := make([]*websocket.Conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	// Close stops the listener; links are hijacked, so it does not see them.
	_ = srv.Close()
	dropped := time.Now()
	for _, c := range conns {
		_ = c.CloseNow()
	}
	s.wg.Wait()
	return dropped
}

// Start listens again on the address of the last listener.
func (s *Server) Start() error {
	if err := s.listen(s.Addr()); err != nil {
		return errors.Join(errors.New("echo: restart"), err)
	}
	return nil
}

// Restart stops the server and starts it again on the same port at once. It
// returns when the links were dropped.
func (s *Server) Restart() (time.Time, error) {
	dropped := s.Stop()
	return dropped, s.Start()
}

// Close stops the server for good.
func (s *Server) Close() { s.Stop() }
