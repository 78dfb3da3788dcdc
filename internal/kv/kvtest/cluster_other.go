//go:build !linux

package kvtest

import "syscall"

// childAttr: only Linux can tie a child's life to its parent; elsewhere the
// test's cleanup alone stops the nodes.
func childAttr() *syscall.SysProcAttr { return nil }
