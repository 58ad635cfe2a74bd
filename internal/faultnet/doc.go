// Package faultnet provides a fault-injecting TCP proxy for tests.
//
// A [Proxy] listens on a loopback address and forwards every accepted
// connection to a target address. While forwarding it can reset
// connections, silently drop traffic, refuse new connections, delay data
// and cut a connection after a number of bytes, which lets tests exercise
// a client's behaviour on unreliable networks without real network faults.
package faultnet
