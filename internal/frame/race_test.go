//go:build race

package frame

// raceEnabled is set under the race detector, which turns off some of the
// compiler's allocation optimisations.
const raceEnabled = true
