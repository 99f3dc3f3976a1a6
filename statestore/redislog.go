package statestore

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"
)

// slogRedis routes go-redis's own log lines to slog at debug level: during an outage
// go-redis logs every refused dial, and the store already counts and reports failures.
type slogRedis struct{ l *slog.Logger }

func (s slogRedis) Printf(ctx context.Context, format string, v ...any) {
	s.l.DebugContext(ctx, fmt.Sprintf(format, v...), "component", "go-redis")
}

// RouteRedisLogs sends go-redis's process-wide log output to l at debug level.
func RouteRedisLogs(l *slog.Logger) { redis.SetLogger(slogRedis{l}) }
