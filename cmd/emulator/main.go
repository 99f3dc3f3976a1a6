// Command emulator serves the Responses API emulator for demos, manual
// testing and load tests: ws://ADDR/v1/responses (with lanes, steer, inject
// and interrupt), POST /v1/responses, and deterministic answers for the
// rest of the API (/v1/models, /v1/chat/completions, /v1/files, …).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"chainmend/emulator"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "emulator:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("emulator", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:8090", "address to serve on")
	scriptPath := fs.String("script", "", "JSON script file (see emulator.ParseScript); default answers \"ok\"")
	apiKey := fs.String("api-key", "", "demand this bearer token when set")
	connLimit := fs.Duration("connection-limit", emulator.DefaultConnectionLimit, "WebSocket connection age cap (0 disables)")
	deltas := fs.Int("text-deltas", emulator.DefaultTextDeltas, "output_text.delta events per message")
	record := fs.Bool("record", false, "keep every frame in memory (for debugging; grows without bound)")
	interruptCancel := fs.Bool("interrupt-cancel", false, "end interrupted responses with response.cancelled instead of response.incomplete")
	interruptDiscard := fs.Bool("interrupt-discard-calls", false, "drop the calls an interrupted response had emitted instead of leaving them pending")
	models := fs.String("models", strings.Join(emulator.DefaultModels, ","), "comma-separated model ids GET /v1/models lists")
	chatText := fs.String("chat-text", emulator.DefaultChatText, "assistant text of /v1/chat/completions")
	chunkInterval := fs.Duration("chunk-interval", 0, "pause between streamed chat completion chunks")
	verbose := fs.Bool("v", false, "log connection events")
	if err := fs.Parse(args); err != nil {
		return err
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	opts := []emulator.Option{
		emulator.WithConnectionLimit(*connLimit),
		emulator.WithTextDeltas(*deltas),
		emulator.WithRecording(*record),
		emulator.WithAPIKey(*apiKey),
		emulator.WithLogger(logger),
		emulator.WithInterrupt(emulator.InterruptReading{Cancel: *interruptCancel, DiscardCalls: *interruptDiscard}),
		emulator.WithModels(splitList(*models)...),
		emulator.WithChatText(*chatText),
		emulator.WithChunkInterval(*chunkInterval),
	}
	if *scriptPath != "" {
		f, err := os.Open(*scriptPath)
		if err != nil {
			return fmt.Errorf("open script: %w", err)
		}
		s, err := emulator.ParseScript(f)
		f.Close()
		if err != nil {
			return err
		}
		opts = append(opts, emulator.WithScript(s))
	}

	e := emulator.New(opts...)
	if err := e.Listen(*listen); err != nil {
		return err
	}
	logger.Info("emulator listening", "ws", e.WebSocketURL(), "http", e.HTTPURL())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	done := make(chan struct{})
	go func() {
		e.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		return errors.New("shutdown timed out")
	}
	st := e.Stats()
	logger.Info("emulator stopped", "connections", st.Connections, "creates", st.Creates, "responses", st.Responses, "errors", st.Errors)
	return nil
}

// splitList splits a comma-separated flag value, dropping empty entries.
func splitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
