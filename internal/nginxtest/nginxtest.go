//go:build unix

// Package nginxtest runs a real nginx (Debian package nginx-light) for tests:
// it renders a config from a text/template for a free loopback port, starts
// nginx in the foreground with a prefix directory of its own, waits until it
// accepts connections, and stops it at cleanup, with its logs in the test
// output when the test failed.
//
// A test that needs nginx skips when it is not installed, except when
// CI=true, where it fails: CI installs nginx-light.
package nginxtest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// Vars is what a config template sees. A template must use Listen in its
// listen directive and should keep its pid, lock, log and temp files under
// Prefix; the configs in the repository's testdata/nginx show the shape.
type Vars struct {
	// User is "user root;" when the tests run as root (a root master would
	// run its workers as nobody, who cannot enter the test's temp
	// directory), and "" otherwise.
	User string
	// Prefix is nginx's prefix directory, a fresh t.TempDir.
	Prefix string
	// Listen is the loopback address nginx is to listen on: 127.0.0.1:port.
	Listen string
	// Upstream is Upstreams[0], or "" when there are none.
	Upstream string
	// Upstreams are the addresses given to Start, in order.
	Upstreams []string
	// Data is Config.Data, for anything else a template needs.
	Data any
}

// Config says what nginx to start.
type Config struct {
	// Name names the config in logs and errors, such as its file name.
	Name string
	// Template is the text of nginx.conf, a text/template over Vars
	// (missing keys are errors).
	Template string
	// Upstreams are the servers the config proxies to, as host:port.
	Upstreams []string
	// Data is passed to the template as .Data.
	Data any
}

// Server is a running nginx.
type Server struct {
	// Addr is where nginx listens: 127.0.0.1:port.
	Addr string
	// Prefix is nginx's prefix directory: its config, pid and logs.
	Prefix string
	name   string

	stopOnce sync.Once
	cmd      *exec.Cmd
	exited   chan error
}

// Binary returns the path of nginx, or skips the test (fails it when
// CI=true) when nginx is not installed.
func Binary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx" // not on a non-root PATH
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("nginx not installed, and CI=true: .ci/run installs nginx-light")
	}
	t.Skip("nginx not installed: apt-get install nginx-light")
	return ""
}

// StartFile starts nginx with the config template in the file at path,
// proxying to upstreams; see Start.
func StartFile(t testing.TB, path string, upstreams ...string) *Server {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("nginxtest: %v", err)
	}
	return Start(t, Config{Name: filepath.Base(path), Template: string(b), Upstreams: upstreams})
}

// Start renders cfg for a free loopback port, starts nginx on it, and waits
// until it accepts connections. nginx is stopped at cleanup (or earlier by
// Stop); if the test failed, its logs go to t.Log. Start fails the test
// when nginx does not start, and skips it when nginx is not installed.
func Start(t testing.TB, cfg Config) *Server {
	t.Helper()
	bin := Binary(t)
	tmpl, err := template.New(cfg.Name).Option("missingkey=error").Parse(cfg.Template)
	if err != nil {
		t.Fatalf("nginxtest: %v", err)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;"
	}
	upstream := ""
	if len(cfg.Upstreams) > 0 {
		upstream = cfg.Upstreams[0]
	}
	// The port is free when picked but may be taken before nginx binds it:
	// then try another.
	for try := 1; ; try++ {
		s := &Server{Addr: freePort(t), Prefix: t.TempDir(), name: cfg.Name}
		var b bytes.Buffer
		err := tmpl.Execute(&b, Vars{
			User: user, Prefix: s.Prefix, Listen: s.Addr,
			Upstream: upstream, Upstreams: cfg.Upstreams, Data: cfg.Data,
		})
		if err != nil {
			t.Fatalf("nginxtest: %v", err)
		}
		conf := filepath.Join(s.Prefix, "nginx.conf")
		if err := os.WriteFile(conf, b.Bytes(), 0o600); err != nil {
			t.Fatalf("nginxtest: %v", err)
		}
		err = s.start(bin, conf)
		if err == nil {
			t.Cleanup(func() {
				s.Stop()
				if t.Failed() {
					t.Logf("nginx (%s) on %s:\n%s", s.name, s.Addr, s.Logs())
				}
			})
			return s
		}
		if try < 3 && strings.Contains(s.Logs(), "Address already in use") {
			t.Logf("nginx: port %s taken, trying another", s.Addr)
			continue
		}
		t.Log(s.Logs())
		t.Fatalf("nginx (%s) did not start: %v", cfg.Name, err)
	}
}

func freePort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("nginxtest: %v", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatalf("nginxtest: %v", err)
	}
	return addr
}

// start runs nginx and waits until it accepts connections. On failure,
// nginx has exited.
func (s *Server) start(bin, conf string) error {
	out, err := os.Create(filepath.Join(s.Prefix, "stderr.log"))
	if err != nil {
		return err
	}
	defer out.Close()
	s.cmd = exec.Command(bin, "-p", s.Prefix+"/", "-c", conf, "-e", filepath.Join(s.Prefix, "error.log"), "-g", "daemon off;")
	s.cmd.Stdout, s.cmd.Stderr = out, out
	// Its own process group, so that a kill reaches the workers too.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return err
	}
	s.exited = make(chan error, 1)
	go func() { s.exited <- s.cmd.Wait() }()

	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr, 100*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case err := <-s.exited:
			s.exited <- err // for Stop
			return errors.Join(errors.New("nginx exited"), err)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return errors.New("nginx accepted no connection within 10s")
		}
	}
}

// Stop asks nginx for a fast shutdown (SIGTERM closes open links, where
// SIGQUIT would wait for them), kills its process group if it has not
// exited within 5 s, and waits for it. It is safe to call more than once.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		_ = s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
			return
		case <-time.After(5 * time.Second):
		}
		_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-s.exited
	})
}

// Logs returns what nginx wrote to its stderr, error log and access log.
func (s *Server) Logs() string {
	var b strings.Builder
	for _, name := range []string{"stderr.log", "error.log", "access.log"} {
		p, err := os.ReadFile(filepath.Join(s.Prefix, name))
		if err != nil {
			continue
		}
		b.WriteString("--- " + name + "\n")
		b.Write(p)
	}
	return b.String()
}

// File returns the content of a file in nginx's prefix directory, such as
// "access.log" or "error.log" (nginx writes a request's access log line when
// the request ends).
func (s *Server) File(name string) (string, error) {
	p, err := os.ReadFile(filepath.Join(s.Prefix, name))
	if err != nil {
		return "", fmt.Errorf("nginxtest: %w", err)
	}
	return string(p), nil
}
