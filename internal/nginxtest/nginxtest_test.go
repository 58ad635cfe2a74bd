//go:build unix

package nginxtest_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tetherws/tether/internal/nginxtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// Two upstreams behind one nginx, picked by path: the template sees both,
// the requests reach each, the access log records them, and Stop frees the
// port.
const twoUpstreams = `{{.User}}
worker_processes 1;
pid "{{.Prefix}}/nginx.pid";
lock_file "{{.Prefix}}/nginx.lock";
error_log "{{.Prefix}}/error.log" info;
events { worker_connections 64; }
http {
    access_log "{{.Prefix}}/access.log";
    client_body_temp_path "{{.Prefix}}/client_body";
    proxy_temp_path "{{.Prefix}}/proxy";
    fastcgi_temp_path "{{.Prefix}}/fastcgi";
    uwsgi_temp_path "{{.Prefix}}/uwsgi";
    scgi_temp_path "{{.Prefix}}/scgi";
    server {
        listen {{.Listen}};
        add_header X-Greeting "{{.Data}}";
{{- range $i, $u := .Upstreams}}
        location /{{$i}}/ { proxy_pass http://{{$u}}; }
{{- end}}
    }
}
`

func upstream(t *testing.T, name string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, name+" "+r.URL.Path)
	}))
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

func get(t *testing.T, url string) (string, http.Header) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), resp.Header
}

func TestStartStop(t *testing.T) {
	a, b := upstream(t, "a"), upstream(t, "b")
	ng := nginxtest.Start(t, nginxtest.Config{Name: "two", Template: twoUpstreams, Upstreams: []string{a, b}, Data: "hi"})
	if !strings.HasPrefix(ng.Addr, "127.0.0.1:") {
		t.Fatalf("nginx listens on %s, want loopback", ng.Addr)
	}
	for i, want := range []string{"a /0/x", "b /1/y"} {
		body, h := get(t, "http://"+ng.Addr+"/"+[]string{"0/x", "1/y"}[i])
		if body != want {
			t.Errorf("got %q, want %q", body, want)
		}
		if h.Get("X-Greeting") != "hi" || !strings.HasPrefix(h.Get("Server"), "nginx") {
			t.Errorf("headers %v: want X-Greeting from Data and an nginx Server", h)
		}
	}
	// nginx logs a request once it has answered it, so the line may come a
	// moment after the client has the answer.
	var log string
	deadline := time.Now().Add(5 * time.Second)
	for {
		var err error
		if log, err = ng.File("access.log"); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(log, "GET /1/y") || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(log, "GET /1/y") {
		t.Errorf("access log lacks the request:\n%s", log)
	}
	if !strings.Contains(ng.Logs(), "--- access.log") {
		t.Errorf("Logs lacks the access log:\n%s", ng.Logs())
	}

	ng.Stop()
	ng.Stop() // idempotent
	if c, err := net.DialTimeout("tcp", ng.Addr, time.Second); err == nil {
		c.Close()
		t.Fatal("nginx still accepts connections after Stop")
	}
}

// A config nginx rejects fails the start, and Logs says why: checked by a
// subtest whose failure is expected, run on a fake testing.TB.
func TestBadConfigFails(t *testing.T) {
	ft := &fakeT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { _ = recover() }()
		nginxtest.Start(ft, nginxtest.Config{Name: "bad", Template: "{{.User}}\nthis is not nginx;\n"})
	}()
	<-done
	if !ft.failed {
		t.Fatal("Start did not fail on a bad config")
	}
	if !strings.Contains(ft.logs.String(), "unknown directive") {
		t.Errorf("the failure does not carry nginx's error:\n%s", ft.logs.String())
	}
}

type fakeT struct {
	testing.TB
	failed bool
	logs   strings.Builder
}

func (f *fakeT) Helper()                    {}
func (f *fakeT) Log(args ...any)            { f.logs.WriteString(strings.TrimSpace(fmt.Sprint(args...)) + "\n") }
func (f *fakeT) Logf(s string, args ...any) { f.logs.WriteString(fmt.Sprintf(s, args...) + "\n") }
func (f *fakeT) Fatalf(s string, args ...any) {
	f.failed = true
	f.logs.WriteString(fmt.Sprintf(s, args...) + "\n")
	panic("fatal")
}
