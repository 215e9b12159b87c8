package gateway

import (
	"bytes"
	"errors"
	"io"
)

// errFrameTooLarge: one upstream frame exceeded gateway.max_frame_bytes.
var errFrameTooLarge = errors.New("gateway: upstream frame too large")

// errTruncatedFrame: the upstream ended in the middle of a frame.
var errTruncatedFrame = errors.New("gateway: upstream ended mid-frame")

// framer splits an upstream byte stream into whole frames: NDJSON lines
// ending in "\n", or SSE events ending in a blank line ("\n\n", or with
// CRLF). A frame is handed out only when complete, so a client never sees a
// partial line, whatever the upstream's chunking (split invariance).
type framer struct {
	src io.Reader
	sse bool
	max int
	buf []byte
	// start and end bound the unconsumed bytes in buf; scan is where the
	// next delimiter search resumes.
	start, end, scan int
	err              error
}

const framerInitialBuf = 512 // token frames are 150–350 bytes; the buffer grows for bigger ones

func newFramer(src io.Reader, sse bool, max int) *framer {
	return &framer{src: src, sse: sse, max: max, buf: make([]byte, framerInitialBuf)}
}

// next returns the next whole frame, valid until the following call. At
// the end of the stream it returns io.EOF, or errTruncatedFrame when bytes
// of an unfinished frame remain; other errors are the source's.
func (f *framer) next() ([]byte, error) {
	for {
		if n := f.delimited(); n > 0 {
			frame := f.buf[f.start : f.start+n]
			f.start += n
			f.scan = f.start
			return frame, nil
		}
		if f.err != nil {
			if f.err == io.EOF && f.start < f.end {
				if !f.sse || len(bytes.TrimSpace(f.buf[f.start:f.end])) > 0 {
					return nil, errTruncatedFrame
				}
			}
			return nil, f.err
		}
		if err := f.fill(); err != nil {
			return nil, err
		}
	}
}

// ready reports whether a whole frame is already buffered, so next will
// return it without reading — and without moving the buffer, so frames
// handed out before stay valid.
func (f *framer) ready() bool { return f.delimited() > 0 }

// delimited reports the length of the complete frame at f.start, or 0.
func (f *framer) delimited() int {
	data := f.buf[f.scan:f.end]
	if !f.sse {
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			return f.scan + i + 1 - f.start
		}
		f.scan = f.end
		return 0
	}
	// SSE: an event ends at an empty line; the line terminators may be LF
	// or CRLF. Search for "\n\n" and "\n\r\n" from one byte back so a
	// delimiter split across reads is still found.
	from := max(f.scan-2, f.start)
	data = f.buf[from:f.end]
	for i := 0; i < len(data); i++ {
		if data[i] != '\n' {
			continue
		}
		if i+1 < len(data) && data[i+1] == '\n' {
			return from + i + 2 - f.start
		}
		if i+2 < len(data) && data[i+1] == '\r' && data[i+2] == '\n' {
			return from + i + 3 - f.start
		}
	}
	f.scan = f.end
	return 0
}

// fill reads more bytes, compacting or growing the buffer as needed, and
// returns errFrameTooLarge once a frame would exceed max.
func (f *framer) fill() error {
	if f.start > 0 && f.start == f.end {
		f.start, f.end, f.scan = 0, 0, 0
	}
	if f.end == len(f.buf) {
		pending := f.end - f.start
		if pending >= f.max {
			return errFrameTooLarge
		}
		if f.start > 0 && pending < len(f.buf)/2 {
			copy(f.buf, f.buf[f.start:f.end])
		} else {
			nb := make([]byte, min(2*len(f.buf), f.max+1))
			copy(nb, f.buf[f.start:f.end])
			f.buf = nb
		}
		f.scan -= f.start
		f.start, f.end = 0, pending
	}
	n, err := f.src.Read(f.buf[f.end:])
	f.end += n
	if err != nil {
		f.err = err
	}
	return nil
}
