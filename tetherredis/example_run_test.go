package tetherredis_test

import (
	"io"
	"os"
	"testing"

	"github.com/tetherws/tether/tetherredis/internal/redistest"
)

// TestExampleNew runs ExampleNew against a real redis-server and checks
// what it prints, which go test cannot do for an example that needs Redis.
func TestExampleNew(t *testing.T) {
	srv := redistest.Start(t)
	t.Setenv("REDIS_ADDR", srv.Addr)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = w
	func() {
		defer func() { os.Stdout = stdout }()
		ExampleNew()
	}()
	_ = w.Close()
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	want := "b sees the session at remote http://10.0.0.5:8080/ws\n" +
		"b sees the session parked\n" +
		"b owns it with epoch 2 after 1, and the state \"seq=42\"\n"
	if string(out) != want {
		t.Errorf("ExampleNew printed\n%s\nwant\n%s", out, want)
	}
}
