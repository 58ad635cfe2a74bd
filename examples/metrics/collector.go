package main

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tetherws/tether"
)

// connCollector exports a Conn's Stats as Prometheus metrics, read at
// scrape time. Counters in Stats only grow, so they map onto Prometheus
// counters as they are.
type connCollector struct {
	c *tether.Conn

	state, transport, queueDepth, queueBytes        *prometheus.Desc
	dials, reconnects, failures, queueDropped       *prometheus.Desc
	pingsSent, pingsAnswered, pingsFailed, stateDur *prometheus.Desc
	messages, bytes                                 *prometheus.Desc
}

func newConnCollector(c *tether.Conn) *connCollector {
	l := prometheus.Labels{"conn_id": c.ID()}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("tether_conn_"+name, help, labels, l)
	}
	return &connCollector{
		c:             c,
		state:         d("state", "1 for the Conn's current state, 0 for the others.", "state"),
		transport:     d("transport", "1 for the Conn's current transport, 0 for the other.", "transport"),
		queueDepth:    d("queue_messages", "Messages waiting in the send queue."),
		queueBytes:    d("queue_bytes", "Bytes waiting in the send queue."),
		queueDropped:  d("queue_dropped_total", "Queued messages dropped by the queue policy or max age."),
		dials:         d("dials_total", "Connection attempts."),
		reconnects:    d("reconnects_total", "Links restored after a loss."),
		failures:      d("handshake_failures_total", "Failed connection attempts, by cause.", "cause"),
		pingsSent:     d("pings_sent_total", "Heartbeat pings sent."),
		pingsAnswered: d("pings_answered_total", "Heartbeat pings answered in time."),
		pingsFailed:   d("pings_failed_total", "Heartbeat pings that timed out or failed."),
		messages:      d("messages_total", "Messages, by direction.", "direction"),
		bytes:         d("bytes_total", "Message bytes, by direction.", "direction"),
		stateDur:      d("state_seconds_total", "Time spent in each state.", "state"),
	}
}

func (cc *connCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		cc.state, cc.transport, cc.queueDepth, cc.queueBytes, cc.queueDropped, cc.dials, cc.reconnects,
		cc.failures, cc.pingsSent, cc.pingsAnswered, cc.pingsFailed, cc.messages, cc.bytes, cc.stateDur,
	} {
		ch <- d
	}
}

func (cc *connCollector) Collect(ch chan<- prometheus.Metric) {
	st := cc.c.Stats()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for _, s := range []tether.State{tether.Connecting, tether.Connected, tether.Reconnecting, tether.Closed} {
		gauge(cc.state, b2f(st.State == s), s.String())
	}
	for _, t := range []tether.Transport{tether.WebSocket, tether.Polling} {
		gauge(cc.transport, b2f(st.Transport == t), t.String())
	}
	gauge(cc.queueDepth, float64(st.QueueDepth))
	gauge(cc.queueBytes, float64(st.QueueBytes))
	counter(cc.queueDropped, st.QueueDropped)
	counter(cc.dials, st.Dials)
	counter(cc.reconnects, st.Reconnects)
	hf := st.HandshakeFailures
	counter(cc.failures, hf.Refused, "refused")
	counter(cc.failures, hf.Timeout, "timeout")
	counter(cc.failures, hf.Status, "status")
	counter(cc.failures, hf.Network, "network")
	counter(cc.failures, hf.Hook, "hook")
	counter(cc.pingsSent, st.PingsSent)
	counter(cc.pingsAnswered, st.PingsAnswered)
	counter(cc.pingsFailed, st.PingsFailed)
	counter(cc.messages, st.MessagesSent, "sent")
	counter(cc.messages, st.MessagesReceived, "received")
	counter(cc.bytes, st.BytesSent, "sent")
	counter(cc.bytes, st.BytesReceived, "received")
	ch <- prometheus.MustNewConstMetric(cc.stateDur, prometheus.CounterValue, st.TimeConnecting.Seconds(), "connecting")
	ch <- prometheus.MustNewConstMetric(cc.stateDur, prometheus.CounterValue, st.TimeConnected.Seconds(), "connected")
	ch <- prometheus.MustNewConstMetric(cc.stateDur, prometheus.CounterValue, st.TimeReconnecting.Seconds(), "reconnecting")
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// stateChanges counts the Conn's transitions, from its state hook.
type stateChanges struct {
	total *prometheus.CounterVec
}

func newStateChanges() *stateChanges {
	return &stateChanges{total: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tether_conn_state_changes_total",
		Help: "State transitions, from the state hook.",
	}, []string{"from", "to", "transport"})}
}

// hook is the Conn's WithStateHook.
func (s *stateChanges) hook(sc tether.StateChange) {
	s.total.WithLabelValues(sc.From.String(), sc.To.String(), sc.Transport.String()).Inc()
}

// rttRecorder feeds a histogram with the round-trip time of each answered
// heartbeat ping. Stats keeps the last RTT and the count of answers; the
// recorder looks at them more often than pings go out (every interval/4),
// so it sees each answer, and observes the last RTT for each new one.
type rttRecorder struct {
	hist prometheus.Histogram
	stop chan struct{}
	done sync.WaitGroup
}

func newRTTRecorder(c *tether.Conn, interval time.Duration) *rttRecorder {
	r := &rttRecorder{
		hist: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "tether_conn_ping_rtt_seconds",
			Help:        "Round-trip time of answered heartbeat pings.",
			ConstLabels: prometheus.Labels{"conn_id": c.ID()},
			Buckets:     prometheus.ExponentialBuckets(50e-6, 2, 14), // 50µs to 0.4s
		}),
		stop: make(chan struct{}),
	}
	r.done.Add(1)
	go func() {
		defer r.done.Done()
		t := time.NewTicker(interval / 4)
		defer t.Stop()
		var seen uint64
		for {
			select {
			case <-t.C:
			case <-r.stop:
				return
			}
			st := c.Stats()
			for ; seen < st.PingsAnswered; seen++ {
				r.hist.Observe(st.RTTLast.Seconds())
			}
		}
	}()
	return r
}

func (r *rttRecorder) Close() {
	close(r.stop)
	r.done.Wait()
}

// handlerCollector exports a Handler's Stats.
type handlerCollector struct {
	h                                        *tether.Handler
	sessions, plain                          *prometheus.Desc
	opened, resumes, unknown, lost, plainAll *prometheus.Desc
}

func newHandlerCollector(h *tether.Handler) *handlerCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("tether_handler_"+name, help, labels, nil)
	}
	return &handlerCollector{
		h:        h,
		sessions: d("sessions", "Sessions held, by the link each has now: websocket, polling, or away (waiting for its client).", "transport"),
		plain:    d("plain_clients", "Plain WebSocket clients being served."),
		opened:   d("sessions_opened_total", "Sessions opened."),
		resumes:  d("resumes_total", "Links that resumed a session."),
		unknown:  d("resumes_unknown_total", "Links that asked for a session the Handler did not hold."),
		lost:     d("sessions_lost_total", "Sessions ended with ErrSessionLost (expired, or replay buffer overflow)."),
		plainAll: d("plain_clients_total", "Plain WebSocket clients served."),
	}
}

func (hc *handlerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{hc.sessions, hc.plain, hc.opened, hc.resumes, hc.unknown, hc.lost, hc.plainAll} {
		ch <- d
	}
}

func (hc *handlerCollector) Collect(ch chan<- prometheus.Metric) {
	st := hc.h.Stats()
	g := func(d *prometheus.Desc, v int, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v), labels...)
	}
	c := func(d *prometheus.Desc, v uint64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	g(hc.sessions, st.OnWebSocket, "websocket")
	g(hc.sessions, st.OnPolling, "polling")
	g(hc.sessions, st.Away, "away")
	g(hc.plain, st.PlainClients)
	c(hc.opened, st.SessionsOpened)
	c(hc.resumes, st.Resumes)
	c(hc.unknown, st.ResumesUnknown)
	c(hc.lost, st.SessionsLost)
	c(hc.plainAll, st.PlainServed)
}
