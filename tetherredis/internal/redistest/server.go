// Package redistest runs a real redis-server for tests: on a free loopback
// port, with no persistence, stopped when the test ends. It can restart
// the server empty, kill it, and freeze it (SIGSTOP) to play the outages a
// deployment meets.
package redistest

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startTimeout bounds how long a starting redis-server may take to answer
// PING.
const startTimeout = 10 * time.Second

// Server is a redis-server process run by a test.
type Server struct {
	// Addr is the server's host:port on 127.0.0.1.
	Addr string

	tb     testing.TB
	bin    string
	dir    string
	port   int
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	frozen bool
}

// Start runs a redis-server on a free loopback port for the test. Without
// redis-server on the PATH the test is skipped, or fails when CI is set.
func Start(tb testing.TB) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("redis-server not found (.ci/run installs the Debian package): %v", err)
		}
		tb.Skipf("redis-server not found; apt-get install redis-server: %v", err)
	}
	s := &Server{tb: tb, bin: bin, dir: tb.TempDir()}
	tb.Cleanup(s.Kill)
	// Another process may take the port between the probe and the start:
	// try a few.
	for range 5 {
		s.port = freePort(tb)
		if err = s.start(); err == nil {
			s.Addr = "127.0.0.1:" + strconv.Itoa(s.port)
			return s
		}
	}
	tb.Fatalf("redis-server did not start: %v\n%s", err, s.logTail())
	return nil
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (s *Server) start() error {
	s.cmd = exec.Command(s.bin,
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--logfile", filepath.Join(s.dir, "redis.log"),
		"--daemonize", "no",
	)
	if err := s.cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	s.exited = exited
	cmd := s.cmd
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	deadline := time.Now().Add(startTimeout)
	for {
		if err := ping(s.port); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			s.Kill()
			return err
		}
		select {
		case <-exited:
			return fmt.Errorf("redis-server exited at start")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ping sends PING over a plain connection: readiness must not depend on the
// client under test.
func ping(port int) error {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if line != "+PONG\r\n" {
		return fmt.Errorf("PING answered %q", line)
	}
	return nil
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// Kill stops the server at once (SIGKILL) and waits for it to exit. The
// server stays down until Restart.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Kill()
	if s.frozen {
		_ = s.cmd.Process.Signal(syscall.SIGCONT)
		s.frozen = false
	}
	<-s.exited
}

// Restart kills the server and starts it again, empty, on the same port:
// a restart without persistence.
func (s *Server) Restart() {
	s.tb.Helper()
	s.Kill()
	// The port was ours a moment ago; wait for it to be free again.
	var err error
	deadline := time.Now().Add(startTimeout)
	for {
		if err = s.start(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.tb.Fatalf("redis-server did not restart on port %d: %v\n%s", s.port, err, s.logTail())
		}
		<-time.After(50 * time.Millisecond)
	}
}

// Freeze stops the server process (SIGSTOP): connections open and
// requests are accepted, but nothing is answered, as with a hung server or
// a network black hole. Thaw resumes it.
func (s *Server) Freeze() {
	s.tb.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		s.tb.Fatalf("SIGSTOP redis-server: %v", err)
	}
	s.frozen = true
}

// Thaw resumes a frozen server (SIGCONT).
func (s *Server) Thaw() {
	s.tb.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		s.tb.Fatalf("SIGCONT redis-server: %v", err)
	}
	s.frozen = false
}

// Client returns a go-redis client of the server with the client's default
// options, closed when the test ends.
func (s *Server) Client(tb testing.TB) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
	tb.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// CommandCalls returns how many times the server has run each command
// (INFO commandstats), by lower-case name. It asks over a plain connection,
// so the only command it adds is the INFO itself.
func (s *Server) CommandCalls(tb testing.TB) map[string]int64 {
	tb.Helper()
	info, err := s.info("commandstats")
	if err != nil {
		tb.Fatalf("INFO commandstats: %v", err)
	}
	calls := make(map[string]int64)
	for line := range strings.SplitSeq(info, "\n") {
		// cmdstat_evalsha:calls=2,usec=...,...
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for f := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				calls[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return calls
}

func (s *Server) info(section string) (string, error) {
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("INFO " + section + "\r\n")); err != nil {
		return "", err
	}
	r := bufio.NewReader(c)
	head, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(head, "$")))
	if err != nil || !strings.HasPrefix(head, "$") || n < 0 || n > 1<<20 {
		return "", fmt.Errorf("INFO answered %q", head)
	}
	b := make([]byte, n+2)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return string(b[:n]), nil
}
