package frame

import (
	"encoding/binary"
	"fmt"
	"slices"
)

// minEntry is the fewest bytes a batch entry can take: a one-byte length
// and the shortest frame, a two-byte Ack. It bounds the count a batch of a
// given size can honestly claim.
const minEntry = 1 + 2

// BatchHeaderMax is the most a batch takes beyond its entries: its count.
const BatchHeaderMax = binary.MaxVarintLen64

// EntrySize returns how many bytes f takes in a batch, its length included,
// so that a sender can fill a batch up to a bound without encoding it.
func EntrySize(f *Frame) int {
	s := size(f)
	return uvarintLen(uint64(s)) + s
}

// AppendBatch appends a batch holding fs to dst and returns the extended
// slice. Like Append it grows dst at most once and panics on an unknown Kind.
func AppendBatch(dst []byte, fs []Frame) []byte {
	n := uvarintLen(uint64(len(fs)))
	for i := range fs {
		s := size(&fs[i])
		n += uvarintLen(uint64(s)) + s
	}
	dst = slices.Grow(dst, n)
	dst = binary.AppendUvarint(dst, uint64(len(fs)))
	for i := range fs {
		dst = binary.AppendUvarint(dst, uint64(size(&fs[i])))
		dst = Append(dst, &fs[i])
	}
	return dst
}

// DecodeBatch decodes the batch that occupies all of b. It refuses a batch
// of more than maxFrames frames (ErrTooMany) and an entry longer than
// maxFrameSize bytes (ErrTooLarge), before decoding or allocating anything
// for them; a limit of 0 or less allows nothing. An empty batch decodes to
// nil. Data payloads alias b, as with Decode.
func DecodeBatch(b []byte, maxFrames int, maxFrameSize int) ([]Frame, error) {
	count, rest, err := uvarint(b, "batch count")
	if err != nil {
		return nil, err
	}
	if count > uint64(max(maxFrames, 0)) {
		return nil, fmt.Errorf("%w: %d frames, limit %d", ErrTooMany, count, maxFrames)
	}
	// The count is now bounded by the caller; bound it by the input too,
	// before it sizes an allocation.
	if count > uint64(len(rest)/minEntry) {
		return nil, fmt.Errorf("%w: batch of %d frames in %d bytes", ErrShort, count, len(b))
	}
	var fs []Frame
	if count > 0 {
		fs = make([]Frame, 0, count)
	}
	for i := range count {
		length, r, err := uvarint(rest, "batch frame length")
		if err != nil {
			return nil, fmt.Errorf("%w (batch frame %d of %d)", err, i+1, count)
		}
		if length > uint64(max(maxFrameSize, 0)) {
			return nil, fmt.Errorf("%w: batch frame %d of %d is %d bytes, limit %d",
				ErrTooLarge, i+1, count, length, maxFrameSize)
		}
		if length > uint64(len(r)) {
			return nil, fmt.Errorf("%w: batch frame %d of %d is %d bytes, %d left",
				ErrShort, i+1, count, length, len(r))
		}
		// The full slice expression keeps each frame's payload from reaching
		// into the next frame.
		f, err := Decode(r[:length:length])
		if err != nil {
			return nil, fmt.Errorf("%w (batch frame %d of %d)", err, i+1, count)
		}
		fs = append(fs, f)
		rest = r[length:]
	}
	if len(rest) != 0 {
		return nil, fmt.Errorf("%w: batch with %d trailing bytes", ErrMalformed, len(rest))
	}
	return fs, nil
}
