package tether

import (
	"strconv"
	"time"
)

// State is the life stage of a Conn.
type State int32

// The states of a Conn. A Conn starts Connecting, moves between Connected and
// Reconnecting as links come and go, and ends Closed.
const (
	Connecting State = iota
	Connected
	Reconnecting
	Closed
)

var stateNames = [...]string{"connecting", "connected", "reconnecting", "closed"}

// String returns "connecting", "connected", "reconnecting" or "closed".
func (s State) String() string {
	if s < 0 || int(s) >= len(stateNames) {
		return "state(" + strconv.Itoa(int(s)) + ")"
	}
	return stateNames[s]
}

// Transport is the kind of link a Conn is using.
type Transport int32

// The transports.
const (
	WebSocket Transport = iota
	Polling
)

// String returns "websocket" or "polling".
func (t Transport) String() string {
	switch t {
	case WebSocket:
		return "websocket"
	case Polling:
		return "polling"
	}
	return "transport(" + strconv.Itoa(int(t)) + ")"
}

// StateChange describes one transition of a Conn, as given to the hook set
// with WithStateHook.
type StateChange struct {
	From, To State
	// Cause is why the transition happened: the error that ended a link, the
	// reason a Conn closed, or nil for a successful connect or a local Close.
	Cause error
	// Attempt counts connection attempts in the current outage, from 1. It is
	// 0 for transitions that are not about an attempt.
	Attempt int
	// Transport is the Conn's transport after the transition.
	Transport Transport
	// At is when the transition happened.
	At time.Time
}
