// Command dumplog is the /init of the live-boot test's initrd: it prints the
// firmware's TCG2 event log (from the vTPM) on the console as hex lines
// between markers and powers the VM off.
package main

import (
	"encoding/hex"
	"fmt"
	"os"
	"syscall"
)

func main() {
	_ = os.MkdirAll("/sys", 0o755)
	_ = os.MkdirAll("/dev", 0o755)
	_ = syscall.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	_ = syscall.Mount("sysfs", "/sys", "sysfs", 0, "")
	_ = syscall.Mount("securityfs", "/sys/kernel/security", "securityfs", 0, "")
	con, err := os.OpenFile("/dev/console", os.O_WRONLY, 0)
	if err != nil {
		con = os.Stdout
	}
	b, err := os.ReadFile("/sys/kernel/security/tpm0/binary_bios_measurements")
	fmt.Fprintf(con, "\nEVENTLOG-BEGIN err=%v len=%d\n", err, len(b))
	h := hex.EncodeToString(b)
	for len(h) > 0 {
		n := min(len(h), 128)
		fmt.Fprintf(con, "EL %s\n", h[:n])
		h = h[n:]
	}
	fmt.Fprintf(con, "EVENTLOG-END\n")
	syscall.Sync()
	_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}
