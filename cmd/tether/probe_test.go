//go:build unix

package main

import (
	"context"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/nginxtest"
)

func echo(ctx context.Context, s *tether.Session) {
	for {
		typ, p, err := s.Read(ctx)
		if err != nil {
			return
		}
		if err := s.Write(ctx, typ, p); err != nil {
			return
		}
	}
}

// handlerServer serves a tether.Handler echo on 127.0.0.1 (over TLS with
// tlsOn) behind check, which may answer the request itself, and returns
// the httptest server.
func handlerServer(t *testing.T, tlsOn bool, check func(w http.ResponseWriter, r *http.Request) bool) *httptest.Server {
	t.Helper()
	h := tether.NewHandler(echo)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if check != nil && check(w, r) {
			return
		}
		h.ServeHTTP(w, r)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	if tlsOn {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(func() {
		_ = h.Close()
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv
}

func wsURL(srv *httptest.Server) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/"
}

// probeOutput runs tether probe and checks its exit code and that every
// want is in its output, in order.
func probeOutput(t *testing.T, code int, want []string, args ...string) string {
	t.Helper()
	stdout, stderr, got := runTether(t, "", append([]string{"probe", "-timeout", "5s"}, args...)...)
	if got != code {
		t.Fatalf("probe exited %d, want %d\nstdout:\n%s\nstderr:\n%s", got, code, stdout, stderr)
	}
	rest := stdout
	for _, w := range want {
		i := strings.Index(rest, w)
		if i < 0 {
			t.Fatalf("probe output lacks %q (after the earlier lines):\n%s", w, stdout)
		}
		rest = rest[i+len(w):]
	}
	return stdout
}

// A direct tether.Handler: every step passes, and the verdict is clean.
func TestProbeDirect(t *testing.T) {
	t.Parallel()
	srv := handlerServer(t, false, nil)
	probeOutput(t, 0, []string{
		"url ", wsURL(srv),
		"dns ", "is an IP address",
		"tcp ", "ms  connected to 127.0.0.1:",
		"tls ", "not used (ws://)",
		"upgrade ", "101 Switching Protocols; a tether.Handler",
		"ping ", "pong received",
		"polling ", "tether long polling answers",
		"verdict: WebSocket works\n",
	}, wsURL(srv))
}

// A real nginx that does not pass Upgrade in front of a tether.Handler:
// the probe names nginx, sees the 426, finds long polling working, and
// says what to change. The same Handler through an nginx that passes
// Upgrade is clean.
func TestProbeNginx(t *testing.T) {
	t.Parallel()
	srv := handlerServer(t, false, nil)
	upstream := srv.Listener.Addr().String()
	strip := nginxtest.StartFile(t, filepath.Join("..", "..", "testdata", "nginx", "strip-upgrade.conf.tmpl"), upstream)
	probeOutput(t, 1, []string{
		"upgrade ", `426 Upgrade Required where 101 was expected; Server: "nginx`,
		"polling ", "tether long polling answers",
		"verdict: a proxy on the path strips the Upgrade header (426 Upgrade Required where 101 was expected, and long polling works): use WithFallback or fix the proxy (nginx: proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade;",
	}, "ws://"+strip.Addr+"/")

	pass := nginxtest.StartFile(t, filepath.Join("..", "..", "testdata", "nginx", "pass-upgrade.conf.tmpl"), upstream)
	probeOutput(t, 0, []string{
		"upgrade ", `101 Switching Protocols; Server: "nginx`,
		"ping ", "pong received",
		"verdict: WebSocket works\n",
	}, "ws://"+pass.Addr+"/")
}

// Credentials in the URL's query and in -H headers are sent, and never
// printed: whether the server takes them, refuses them, or is not there.
func TestProbeNeverPrintsCredentials(t *testing.T) {
	t.Parallel()
	const token, bearer = "tok-Secret-4711", "Bearer hdr-Secret-0815"
	seen := make(chan string, 64)
	accept := handlerServer(t, false, func(w http.ResponseWriter, r *http.Request) bool {
		seen <- r.URL.Query().Get("token") + " " + r.Header.Get("Authorization")
		return false
	})
	refuse := handlerServer(t, false, func(w http.ResponseWriter, r *http.Request) bool {
		seen <- r.URL.Query().Get("token") + " " + r.Header.Get("Authorization")
		http.Error(w, "go away", http.StatusUnauthorized)
		return true
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gone := "ws://" + ln.Addr().String() + "/"
	ln.Close()

	for _, tc := range []struct {
		name    string
		url     string
		code    int
		verdict string
		sent    bool
	}{
		{"accepted", wsURL(accept), 0, "verdict: WebSocket works", true},
		{"refused", wsURL(refuse), 1, "verdict: server refuses: 401 Unauthorized", true},
		{"nothing listens", gone, 1, "verdict: nothing listens on", false},
	} {
		out := probeOutput(t, tc.code, []string{"url ", "?token=REDACTED", tc.verdict},
			"-H", "Authorization: "+bearer, tc.url+"?token="+token)
		for _, secret := range []string{"tok-Secret-4711", "hdr-Secret-0815"} {
			if strings.Contains(out, secret) {
				t.Errorf("%s: the probe printed a credential:\n%s", tc.name, out)
			}
		}
		if tc.sent {
			if got := <-seen; got != token+" "+bearer {
				t.Errorf("%s: the server got %q: the credentials were not sent", tc.name, got)
			}
		}
	}
}

// TLS: with the server's CA given by -cacert the probe reports the TLS
// version and certificate and passes; without it the verdict says what to
// do; -insecure passes and says the certificate was not verified.
func TestProbeTLS(t *testing.T) {
	t.Parallel()
	srv := handlerServer(t, true, nil)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(ca, pemBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	url := "wss" + strings.TrimPrefix(srv.URL, "https") + "/"

	probeOutput(t, 0, []string{
		"tls ", "TLS 1.3, certificate \"O=Acme Co\" issued by \"O=Acme Co\", expires ",
		"upgrade ", "101 Switching Protocols",
		"verdict: WebSocket works",
	}, "-cacert", ca, url)
	probeOutput(t, 1, []string{
		"tls ", "handshake failed",
		"verdict: TLS: the server's certificate is signed by an authority this machine does not trust: pass its CA with -cacert",
	}, url)
	probeOutput(t, 0, []string{
		"tls ", "NOT verified (-insecure)",
		"verdict: WebSocket works",
	}, "-insecure", url)
}

// A plain HTTP server that is no WebSocket endpoint: 200 where 101 was
// expected, no long polling, and a verdict that says both causes.
func TestProbeNotWebSocket(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("hello"))
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	probeOutput(t, 1, []string{
		"upgrade ", "200 OK where 101 was expected",
		"polling ", "no tether long polling here",
		"verdict: 200 OK where 101 was expected: a proxy on the path strips the Upgrade header, or this URL is not a WebSocket endpoint",
	}, wsURL(srv))
}
