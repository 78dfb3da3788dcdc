package kvtest

import "syscall"

// childAttr asks the kernel to kill a node when the test binary dies
// without running its cleanups (a panic elsewhere, a -timeout, a kill), so
// no redis-server outlives the test run. The signal is tied to the thread
// that started the child; Go keeps its threads alive unless a goroutine
// locked to one exits, which the tests starting nodes never do.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
