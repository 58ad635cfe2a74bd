package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestRun(t *testing.T) {
	defer goleak.VerifyNone(t)
	var out bytes.Buffer
	if err := run(context.Background(), &out, 15*time.Second, 0); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	got := out.String()
	for _, want := range []string{
		`tether_conn_state{conn_id="ID",state="connected"} 1`,
		`tether_conn_transport{conn_id="ID",transport="websocket"} 1`,
		`tether_conn_dials_total{conn_id="ID"} 2`,
		`tether_conn_reconnects_total{conn_id="ID"} 1`,
		`tether_conn_handshake_failures_total{cause="refused",conn_id="ID"} 0`,
		`tether_conn_messages_total{conn_id="ID",direction="sent"} 10`,
		`tether_conn_messages_total{conn_id="ID",direction="received"} 10`,
		`tether_conn_bytes_total{conn_id="ID",direction="sent"} 91`,
		`tether_conn_queue_messages{conn_id="ID"} 0`,
		`tether_conn_pings_failed_total{conn_id="ID"} 0`,
		`tether_conn_state_changes_total{from="connected",to="reconnecting",transport="websocket"} 1`,
		`tether_conn_state_changes_total{from="reconnecting",to="connected",transport="websocket"} 1`,
		`tether_handler_sessions{transport="websocket"} 1`,
		`tether_handler_sessions{transport="away"} 0`,
		`tether_handler_sessions_opened_total 1`,
		`tether_handler_resumes_total 1`,
		`tether_handler_sessions_lost_total 0`,
	} {
		re := regexp.MustCompile("(?m)^" + strings.ReplaceAll(regexp.QuoteMeta(want), "ID", "[0-9a-f]{16}") + "$")
		if !re.MatchString(got) {
			t.Errorf("output lacks %s\n", want)
		}
	}
	for _, want := range []string{
		`tether_conn_ping_rtt_seconds_count{conn_id="[0-9a-f]{16}"} [1-9]`,
		`tether_conn_pings_answered_total{conn_id="[0-9a-f]{16}"} [1-9]`,
		`tether_conn_state_seconds_total{conn_id="[0-9a-f]{16}",state="connected"} 0\.[0-9]`,
	} {
		if !regexp.MustCompile("(?m)^" + want).MatchString(got) {
			t.Errorf("output lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", got)
	}
}

func TestRunTimeout(t *testing.T) {
	defer goleak.VerifyNone(t)
	var out bytes.Buffer
	start := time.Now()
	err := run(context.Background(), &out, 30*time.Millisecond, 0)
	if err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
		t.Fatalf("got %v, want a deadline error\n%s", err, out.String())
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to give up", d)
	}
}
