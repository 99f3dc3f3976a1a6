package decisionlog

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
)

// Defaults of a Writer.
const (
	// DefaultMaxBytes is the size at which the file is rotated.
	DefaultMaxBytes = 100 << 20
	// DefaultKeep is how many rotated files are kept.
	DefaultKeep = 5
	// DefaultQueue is how many records may wait for the disk before new ones are dropped.
	DefaultQueue = 4096
)

// Writer appends records to a JSONL file from a goroutine of its own, so that a turn never
// waits on the disk: Write queues the record and returns at once, and a record that finds
// the queue full is dropped and counted. When the file would grow past its size limit it is
// rotated: FILE becomes FILE.1, FILE.1 becomes FILE.2, and so on, and the oldest beyond the
// kept count is removed. Records are flushed whenever the queue runs empty.
type Writer struct {
	path     string
	maxBytes int64
	keep     int
	log      *slog.Logger

	// mu guards closed, so that a Write racing Close never sends on a closed queue.
	mu     sync.RWMutex
	closed bool
	queue  chan *Record
	done   chan struct{}

	// The file, its buffer and its size belong to the loop goroutine.
	f    *os.File
	buf  *bufio.Writer
	size int64
	err  error

	written, dropped, failed atomic.Uint64
}

// Option configures a Writer.
type Option func(*Writer)

// WithMaxBytes sets the size at which the file is rotated (default DefaultMaxBytes). A
// record larger than that still goes whole into a file of its own.
func WithMaxBytes(n int64) Option { return func(w *Writer) { w.maxBytes = n } }

// WithKeep sets how many rotated files are kept (default DefaultKeep); 0 keeps none.
func WithKeep(n int) Option { return func(w *Writer) { w.keep = n } }

// WithQueue sets how many records may wait for the disk (default DefaultQueue).
func WithQueue(n int) Option {
	return func(w *Writer) { w.queue = make(chan *Record, n) }
}

// WithLogger sets the logger write failures are reported on (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(w *Writer) { w.log = l } }

// Open opens (or creates) the log file at path for appending and starts the writer.
func Open(path string, opts ...Option) (*Writer, error) {
	w := &Writer{path: path, maxBytes: DefaultMaxBytes, keep: DefaultKeep, done: make(chan struct{})}
	for _, o := range opts {
		o(w)
	}
	if w.queue == nil {
		w.queue = make(chan *Record, DefaultQueue)
	}
	if w.log == nil {
		w.log = slog.Default()
	}
	if w.maxBytes <= 0 {
		return nil, fmt.Errorf("decision log: max bytes must be positive, got %d", w.maxBytes)
	}
	if w.keep < 0 {
		return nil, fmt.Errorf("decision log: kept files must be 0 or more, got %d", w.keep)
	}
	if err := w.open(os.O_APPEND); err != nil {
		return nil, err
	}
	go w.loop()
	return w, nil
}

// Write queues a record and reports whether it was queued; a full queue or a closed writer
// drops it. The record must not change afterwards.
func (w *Writer) Write(r *Record) bool {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if !w.closed {
		select {
		case w.queue <- r:
			return true
		default:
		}
	}
	w.dropped.Add(1)
	return false
}

// Close writes what is queued, closes the file and returns the first write error, if any.
// Records written after Close are dropped.
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		<-w.done
		return w.err
	}
	w.closed = true
	close(w.queue)
	w.mu.Unlock()
	<-w.done
	return w.err
}

// Stats are a Writer's counts.
type Stats struct {
	// Written records reached the file's buffer; Dropped found the queue full or the writer
	// closed; Failed could not be encoded or written.
	Written, Dropped, Failed uint64
}

// Stats returns the writer's counts so far.
func (w *Writer) Stats() Stats {
	return Stats{Written: w.written.Load(), Dropped: w.dropped.Load(), Failed: w.failed.Load()}
}

func (w *Writer) loop() {
	defer close(w.done)
	for r := range w.queue {
		w.write(r)
		if len(w.queue) == 0 {
			w.flush()
		}
	}
	w.flush()
	if w.f != nil {
		if err := w.f.Close(); err != nil {
			w.fail(fmt.Errorf("decision log: close: %w", err))
		}
	}
}

func (w *Writer) write(r *Record) {
	line, err := json.Marshal(r)
	if err != nil {
		w.fail(fmt.Errorf("decision log: encode record: %w", err))
		return
	}
	line = append(line, '\n')
	if w.size > 0 && w.size+int64(len(line)) > w.maxBytes {
		if err := w.rotate(); err != nil {
			w.fail(err)
			return
		}
	}
	if w.buf == nil {
		// A failed rotation left no file open: try again with each record.
		if err := w.open(os.O_APPEND); err != nil {
			w.fail(err)
			return
		}
	}
	n, err := w.buf.Write(line)
	w.size += int64(n)
	if err != nil {
		w.fail(fmt.Errorf("decision log: write: %w", err))
		return
	}
	w.written.Add(1)
}

func (w *Writer) flush() {
	if w.buf == nil {
		return
	}
	if err := w.buf.Flush(); err != nil {
		w.fail(fmt.Errorf("decision log: flush: %w", err))
	}
}

// fail counts a failure; the first one is kept for Close and every one is logged (the error
// names the file, never a record's facts).
func (w *Writer) fail(err error) {
	if w.failed.Add(1) == 1 {
		w.err = err
	}
	w.log.Warn("decision log write failed", "err", err)
}

// rotate moves FILE to FILE.1 (shifting older files up, the oldest beyond keep removed) and
// starts an empty FILE.
func (w *Writer) rotate() error {
	w.flush()
	if err := w.f.Close(); err != nil {
		w.fail(fmt.Errorf("decision log: close: %w", err))
	}
	w.f, w.buf = nil, nil
	if w.keep == 0 {
		if err := os.Remove(w.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("decision log: rotate: %w", err)
		}
	} else {
		if err := os.Remove(w.rotated(w.keep)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("decision log: rotate: %w", err)
		}
		for i := w.keep - 1; i >= 0; i-- {
			if err := os.Rename(w.rotated(i), w.rotated(i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("decision log: rotate: %w", err)
			}
		}
	}
	return w.open(os.O_TRUNC)
}

// rotated names the i-th rotated file; 0 is the live one.
func (w *Writer) rotated(i int) string {
	if i == 0 {
		return w.path
	}
	return w.path + "." + strconv.Itoa(i)
}

func (w *Writer) open(mode int) error {
	// 0600: the log names sessions and tools, which is nobody else's business on the host.
	f, err := os.OpenFile(w.path, os.O_CREATE|os.O_WRONLY|mode, 0o600)
	if err != nil {
		return fmt.Errorf("decision log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("decision log: %w", err)
	}
	w.f, w.buf, w.size = f, bufio.NewWriterSize(f, 64<<10), st.Size()
	return nil
}

// Files returns the files a log at path has written, oldest first: the rotated ones that
// exist (FILE.N … FILE.1), then FILE itself.
func Files(path string) []string {
	var out []string
	for i := 1; ; i++ {
		if _, err := os.Stat(path + "." + strconv.Itoa(i)); err != nil {
			break
		}
		out = append(out, path+"."+strconv.Itoa(i))
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return append(out, path)
}
