package redistest_test

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vega-gateway/vega-gateway/redistest"
)

func roundTrip(t *testing.T, addr, cmd string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte(cmd + "\r\n")); err != nil {
		return "", err
	}
	return bufio.NewReader(c).ReadString('\n')
}

func TestStartStopRestart(t *testing.T) {
	s := redistest.Start(t)
	if got, err := roundTrip(t, s.Addr(), "SET k v"); err != nil || !strings.HasPrefix(got, "+OK") {
		t.Fatalf("SET: %q %v", got, err)
	}
	if got, err := roundTrip(t, s.Addr(), "GET k"); err != nil || !strings.HasPrefix(got, "$1") {
		t.Fatalf("GET: %q %v", got, err)
	}
	s.Stop()
	if _, err := roundTrip(t, s.Addr(), "PING"); err == nil {
		t.Fatal("the server still answers after Stop")
	}
	s.Restart()
	if got, err := roundTrip(t, s.Addr(), "GET k"); err != nil || !strings.HasPrefix(got, "$-1") {
		t.Fatalf("after Restart the data set should be empty: %q %v", got, err)
	}
}
