// Package serverstats reads what a flock-api process says about itself on
// /metrics, so a benchmark can set the server's own view beside the one its
// clients measured.
package serverstats

import (
	"bufio"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// MeanLatency is the mean of the server's request-duration histogram for one
// operation, since the process started.
func MeanLatency(client *http.Client, base, op string) (time.Duration, error) {
	resp, err := client.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum, count float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, `operation="`+op+`"`) {
			continue
		}
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "flock_http_request_duration_seconds_sum"):
			fmt.Sscan(f[len(f)-1], &sum)
		case strings.HasPrefix(line, "flock_http_request_duration_seconds_count"):
			fmt.Sscan(f[len(f)-1], &count)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read /metrics: %w", err)
	}
	if count == 0 {
		return 0, fmt.Errorf("no samples of %s", op)
	}
	return time.Duration(sum / count * float64(time.Second)), nil
}
