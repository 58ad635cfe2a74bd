//go:build unix

package tether_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tetherws/tether"
	"github.com/tetherws/tether/internal/nginxtest"
)

// startRefusingNginx starts nginx with the config template
// testdata/nginx/conf, proxying to upstream; a config that refuses upgrades
// answers them with status.
func startRefusingNginx(t *testing.T, conf, upstream string, status int) *nginxtest.Server {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "nginx", conf))
	require.NoError(t, err)
	return nginxtest.Start(t, nginxtest.Config{Name: conf, Template: string(b), Upstreams: []string{upstream}, Data: status})
}

// A proxy that refuses WebSocket (nginx standing in for Squid, whose
// ERR_ACCESS_DENIED answers the Upgrade with 403, or a gateway answering
// 426), or one that strips the Upgrade so that the Handler answers 426 with
// its mark: the Conn is on long polling within a second, though the backoff
// would space three handshakes by seconds.
func TestNginxRefusedUpgradeFallsBackAtOnce(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, conf string
		status     int
	}{
		{"403 from the proxy", "refuse-upgrade.conf.tmpl", http.StatusForbidden},
		{"426 from the proxy", "refuse-upgrade.conf.tmpl", http.StatusUpgradeRequired},
		{"426 from the Handler", "strip-upgrade.conf.tmpl", http.StatusUpgradeRequired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ss := newSessionServer(t, sessionEcho)
			ng := startRefusingNginx(t, tc.conf, ss.Addr(), tc.status)
			ev := newEvents()
			start := time.Now()
			c := nginxDial(t, "ws://"+ng.Addr+"/", tether.WithFallback(""), ev.option(),
				tether.WithBackoff(constBackoff(time.Second)), tether.WithProbeBackoff(constBackoff(time.Hour)))
			took := time.Since(start)
			require.Less(t, took, time.Second, "on polling within a second")
			require.Equal(t, tether.Polling, c.Transport())
			sc := ev.next(t, tether.Connected, time.Second)
			var he *tether.HandshakeError
			require.ErrorAs(t, sc.Cause, &he, "the move reports its cause")
			require.Equal(t, tc.status, he.StatusCode)
			require.Equal(t, uint64(2), c.Stats().Dials, "one handshake, then polling")
			nginxEchoOnce(t, c, "through the proxy")
		})
	}
}

// The same proxy, in front of a server that refuses polling too: the 403 is
// permanent after one handshake and one polling request, and Dial says so.
func TestNginxRefusedEverywhereIsPermanent(t *testing.T) {
	t.Parallel()
	var reqs atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs.Add(1)
		http.Error(w, "no", http.StatusForbidden)
	}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	ng := startRefusingNginx(t, "refuse-upgrade.conf.tmpl", ln.Addr().String(), http.StatusForbidden)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	var logs lockedWriter
	_, err = tether.Dial(ctx, "ws://"+ng.Addr+"/", tether.WithFallback(""), tether.WithBackoff(constBackoff(time.Second)),
		tether.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	require.Less(t, time.Since(start), time.Second)
	var he *tether.HandshakeError
	require.True(t, errors.As(err, &he), "got %v", err)
	require.Equal(t, http.StatusForbidden, he.StatusCode)
	require.NotErrorIs(t, err, tether.ErrGaveUp)
	require.Equal(t, int64(1), reqs.Load(), "one polling open reached the server; the handshake stopped at the proxy")
	// Each attempt is logged with its own transport, and the last says
	// which rule made it final.
	var ws, poll string
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "connect attempt failed") && strings.Contains(line, "transport=websocket") {
			ws = line
		}
		if strings.Contains(line, "connect attempt failed") && strings.Contains(line, "transport=polling") {
			poll = line
		}
	}
	require.Contains(t, ws, "retry=true", logs.String())
	require.Contains(t, poll, "retry=false", logs.String())
	require.Contains(t, poll, `rule="long-polling status 403 is permanent"`, logs.String())
}
