package bus

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/twmb/franz-go/pkg/kfake"
)

// startEmbedded runs a one-broker kfake cluster on a random loopback port with
// AllTopics already created, so `--target=all` needs no Kafka. Its state lives
// in memory and dies with the process.
func startEmbedded(partitions int32, log *slog.Logger) (*kfake.Cluster, error) {
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.SeedTopics(partitions, AllTopics...),
		kfake.DefaultNumPartitions(int(partitions)),
		kfake.WithLogger(kfakeLogger{log}),
	)
	if err != nil {
		return nil, fmt.Errorf("kfake cluster: %w", err)
	}
	return c, nil
}

// kfakeLogger passes the fake broker's warnings and errors to slog; below
// that it logs every request.
type kfakeLogger struct{ log *slog.Logger }

func (l kfakeLogger) Logf(level kfake.LogLevel, format string, args ...any) {
	var lvl slog.Level
	switch level {
	case kfake.LogLevelError:
		lvl = slog.LevelError
	case kfake.LogLevelWarn:
		lvl = slog.LevelWarn
	default:
		return
	}
	if !l.log.Enabled(context.Background(), lvl) {
		return
	}
	l.log.Log(context.Background(), lvl, "embedded kafka: "+fmt.Sprintf(format, args...))
}
