package tether

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Stats is a snapshot of a Conn's counters, returned by value.
type Stats struct {
	State     State
	Transport Transport

	// Dials counts connection attempts; Reconnects counts links restored
	// after a loss.
	Dials, Reconnects uint64
	// HandshakeFailures counts failed attempts by cause.
	HandshakeFailures HandshakeFailures

	// PingsSent counts heartbeat pings; PingsAnswered those whose pong came
	// back in time; PingsFailed those that timed out or failed.
	PingsSent, PingsAnswered, PingsFailed uint64
	// Round-trip times of answered pings (heartbeat and Ping).
	RTTLast, RTTMin, RTTMean, RTTMax time.Duration

	MessagesSent, MessagesReceived uint64
	BytesSent, BytesReceived       uint64

	// QueueDepth and QueueBytes describe the send queue now; QueueDropped
	// counts messages dropped by QueueDropOldest or WithQueueMaxAge, or
	// because the server of a session told, after they were queued, a read
	// limit they are over.
	QueueDepth, QueueBytes int
	QueueDropped           uint64

	// Time spent in each state so far.
	TimeConnecting, TimeConnected, TimeReconnecting time.Duration
}

// HandshakeFailures counts failed connection attempts by cause.
type HandshakeFailures struct {
	Refused uint64 // TCP connection refused: nothing listens
	Timeout uint64 // the handshake did not finish in time
	Status  uint64 // the server answered with a status other than 101
	Network uint64 // other network errors: resets, DNS, TLS
	Hook    uint64 // WithHeader or WithOnConnect returned an error
}

type counters struct {
	dials, reconnects                       atomic.Uint64
	refused, timeout, status, network, hook atomic.Uint64
	pingsSent, pingsOK, pingsFailed         atomic.Uint64
	msgsOut, msgsIn, bytesOut, bytesIn      atomic.Uint64
	rttMu                                   sync.Mutex
	rttLast, rttMin, rttMax, rttSum         time.Duration
	rttN                                    int64
	inState                                 [4]time.Duration // guarded by Conn.mu
}

func (s *counters) recordRTT(d time.Duration) {
	s.rttMu.Lock()
	s.rttLast = d
	if s.rttN == 0 || d < s.rttMin {
		s.rttMin = d
	}
	if d > s.rttMax {
		s.rttMax = d
	}
	s.rttSum += d
	s.rttN++
	s.rttMu.Unlock()
}

func (s *counters) countFailure(err error) {
	var he *HandshakeError
	switch {
	case errors.As(err, &he):
		s.status.Add(1)
	case errors.Is(err, syscall.ECONNREFUSED):
		s.refused.Add(1)
	case isTimeout(err):
		s.timeout.Add(1)
	case errors.As(err, new(*hookError)):
		s.hook.Add(1)
	default:
		s.network.Add(1)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, errHandshakeTimeout) || (errors.As(err, &ne) && ne.Timeout())
}

func (s *counters) addStateTime(st State, d time.Duration) {
	if st >= 0 && int(st) < len(s.inState) {
		s.inState[st] += d
	}
}

// Stats returns a snapshot of the Conn's counters.
func (c *Conn) Stats() Stats {
	s := &c.stats
	st := Stats{
		State:      c.State(),
		Dials:      s.dials.Load(),
		Reconnects: s.reconnects.Load(),
		HandshakeFailures: HandshakeFailures{
			Refused: s.refused.Load(),
			Timeout: s.timeout.Load(),
			Status:  s.status.Load(),
			Network: s.network.Load(),
			Hook:    s.hook.Load(),
		},
		PingsSent:        s.pingsSent.Load(),
		PingsAnswered:    s.pingsOK.Load(),
		PingsFailed:      s.pingsFailed.Load(),
		MessagesSent:     s.msgsOut.Load(),
		MessagesReceived: s.msgsIn.Load(),
		BytesSent:        s.bytesOut.Load(),
		BytesReceived:    s.bytesIn.Load(),
	}
	s.rttMu.Lock()
	st.RTTLast, st.RTTMin, st.RTTMax = s.rttLast, s.rttMin, s.rttMax
	if s.rttN > 0 {
		st.RTTMean = s.rttSum / time.Duration(s.rttN)
	}
	s.rttMu.Unlock()

	c.mu.Lock()
	st.Transport = c.transport
	st.QueueDepth, st.QueueBytes, st.QueueDropped = c.queue.len(), c.queue.bytes, c.queue.dropped
	times := s.inState
	times[st.State] += time.Since(c.stateSince)
	c.mu.Unlock()
	st.TimeConnecting, st.TimeConnected, st.TimeReconnecting = times[Connecting], times[Connected], times[Reconnecting]
	return st
}
