package appliance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// VolumeState is what the data device holds before the boot touches it.
type VolumeState int

const (
	// Blank: the first and last MiB are zero (a new disk). Only a blank
	// device is ever formatted.
	Blank VolumeState = iota
	// Sealed: a LUKS2 volume whose first boot finished (subsystem
	// "fleetbox").
	Sealed
	// Formatting: a LUKS2 volume whose first boot stopped after luksFormat
	// and before its file system was made (subsystem "fleetbox-new");
	// nothing was stored on it yet.
	Formatting
	// Foreign: anything else (another file system, LUKS1, a LUKS2 volume
	// that is not fleetbox's). Never formatted, never opened.
	Foreign
)

func (s VolumeState) String() string {
	return [...]string{"blank", "sealed", "formatting", "foreign"}[s]
}

// Volume is the encrypted data volume. The real one (LUKSVolume) runs
// cryptsetup, mkfs.ext4 and mount(2); tests use a fake.
type Volume interface {
	// Wait blocks until the device exists or ctx ends.
	Wait(ctx context.Context) error
	// Inspect reads the device's state and, for a LUKS2 volume, its UUID
	// (the instance ID).
	Inspect(ctx context.Context) (VolumeState, string, error)
	// Format makes a LUKS2 volume keyed by key with the given UUID and
	// leaves it in the Formatting state.
	Format(ctx context.Context, key []byte, uuid string) error
	// Open unlocks the volume; ErrWrongKey when key does not open it.
	Open(ctx context.Context, key []byte) error
	// MakeFS creates the file system on the opened volume and moves it to
	// the Sealed state.
	MakeFS(ctx context.Context) error
	// Mount mounts the opened volume at target.
	Mount(ctx context.Context, target string) error
}

// ErrWrongKey means the released key does not open the volume: another
// instance's disk, a changed KMS root secret or profile. The boot stops;
// the volume is never reformatted.
var ErrWrongKey = errors.New("the key does not open the data volume")

// Subsystem labels of the LUKS2 header (cryptsetup --subsystem).
const (
	subsystemSealed     = "fleetbox"
	subsystemFormatting = "fleetbox-new"
	luksLabel           = "fleetbox-data"
)

// LUKSVolume is the data volume on a block device.
type LUKSVolume struct {
	Device string
	// Mapper is the device-mapper name (/dev/mapper/NAME).
	Mapper string
	// WaitTimeout bounds Wait. Zero: 30 s.
	WaitTimeout time.Duration
}

// mapped is the unlocked device.
func (v *LUKSVolume) mapped() string { return "/dev/mapper/" + v.Mapper }

// Wait implements Volume.
func (v *LUKSVolume) Wait(ctx context.Context) error {
	d := v.WaitTimeout
	if d == 0 {
		d = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		if _, err := os.Stat(v.Device); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("data device %s did not appear within %s (attach a second disk for the data volume)", v.Device, d)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Inspect implements Volume.
func (v *LUKSVolume) Inspect(ctx context.Context) (VolumeState, string, error) {
	f, err := os.Open(v.Device)
	if err != nil {
		return Foreign, "", fmt.Errorf("opening data device: %w", err)
	}
	defer f.Close()
	return inspect(f)
}

// inspect classifies a device from its bytes.
func inspect(r io.ReaderAt) (VolumeState, string, error) {
	hdr := make([]byte, luks2HeaderSize)
	n, err := r.ReadAt(hdr, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Foreign, "", fmt.Errorf("reading data device: %w", err)
	}
	hdr = hdr[:n]
	if h, ok := parseLUKS2Header(hdr); ok {
		switch h.Subsystem {
		case subsystemSealed:
			return Sealed, h.UUID, nil
		case subsystemFormatting:
			return Formatting, h.UUID, nil
		}
		return Foreign, h.UUID, nil
	}
	if bytes.HasPrefix(hdr, []byte(luksMagic)) {
		return Foreign, "", nil // LUKS1 or a damaged header
	}
	blank, err := isBlank(r)
	if err != nil {
		return Foreign, "", err
	}
	if blank {
		return Blank, "", nil
	}
	return Foreign, "", nil
}

// isBlank reports whether the first and the last MiB are all zero (where
// partition tables, file system superblocks and LUKS headers live).
func isBlank(r io.ReaderAt) (bool, error) {
	const span = 1 << 20
	buf := make([]byte, span)
	n, err := r.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, fmt.Errorf("reading data device: %w", err)
	}
	if !allZero(buf[:n]) {
		return false, nil
	}
	size := int64(-1)
	if s, ok := r.(interface {
		Seek(int64, int) (int64, error)
	}); ok {
		if end, err := s.Seek(0, io.SeekEnd); err == nil {
			size = end
		}
	}
	if size > span {
		off := max(size-span, span)
		n, err := r.ReadAt(buf, off)
		if err != nil && !errors.Is(err, io.EOF) {
			return false, fmt.Errorf("reading data device: %w", err)
		}
		return allZero(buf[:n]), nil
	}
	return true, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// The LUKS2 binary header (LUKS2 On-Disk Format Specification, version
// 1.1.x, section 2.1 "LUKS2 binary header"): magic "LUKS\xba\xbe", a
// big-endian u16 version 2, then at fixed offsets the label (24, 48
// bytes), the UUID (168, 40 bytes) and the subsystem (208, 48 bytes),
// NUL-terminated strings.
const (
	luksMagic       = "LUKS\xba\xbe"
	luks2HeaderSize = 4096
)

type luks2Header struct {
	Label, UUID, Subsystem string
}

func parseLUKS2Header(b []byte) (luks2Header, bool) {
	if len(b) < 512 || string(b[:6]) != luksMagic || b[6] != 0 || b[7] != 2 {
		return luks2Header{}, false
	}
	field := func(off, n int) string {
		s := b[off : off+n]
		if i := bytes.IndexByte(s, 0); i >= 0 {
			s = s[:i]
		}
		return string(s)
	}
	return luks2Header{Label: field(24, 48), UUID: field(168, 40), Subsystem: field(208, 48)}, true
}

// Format implements Volume. PBKDF2 with the minimum 1000 iterations: the
// key is 32 random bytes from the KMS, not a password, so a slow KDF adds
// no strength and costs seconds under emulation (argon2id: 11 s; this: 1-2 s).
func (v *LUKSVolume) Format(ctx context.Context, key []byte, uuid string) error {
	err := run(ctx, key, "cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode",
		"--cipher", "aes-xts-plain64", "--key-size", "512", "--hash", "sha256",
		"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
		"--uuid", uuid, "--label", luksLabel, "--subsystem", subsystemFormatting,
		"--key-file", "-", v.Device)
	if err != nil {
		return fmt.Errorf("formatting %s: %w", v.Device, err)
	}
	return nil
}

// Open implements Volume.
func (v *LUKSVolume) Open(ctx context.Context, key []byte) error {
	if _, err := os.Stat(v.mapped()); err == nil {
		return nil // opened by an earlier run of this boot
	}
	err := run(ctx, key, "cryptsetup", "open", "--type", "luks2", "--key-file", "-", v.Device, v.Mapper)
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 2 {
		// cryptsetup(8), RETURN CODES: 2 "no permission (bad passphrase)".
		return fmt.Errorf("%w %s", ErrWrongKey, v.Device)
	}
	if err != nil {
		return fmt.Errorf("opening %s: %w", v.Device, err)
	}
	return nil
}

// MakeFS implements Volume.
func (v *LUKSVolume) MakeFS(ctx context.Context) error {
	if err := run(ctx, nil, "mkfs.ext4", "-q", "-F", "-L", "fleetbox", "-m", "0", v.mapped()); err != nil {
		return fmt.Errorf("making the file system: %w", err)
	}
	if err := run(ctx, nil, "cryptsetup", "config", "--subsystem", subsystemSealed, v.Device); err != nil {
		return fmt.Errorf("marking the volume formatted: %w", err)
	}
	return nil
}

// Mount implements Volume: ext4, nosuid, nodev, noexec (nothing on the
// data volume runs).
func (v *LUKSVolume) Mount(_ context.Context, target string) error {
	if err := os.MkdirAll(target, 0o755); err != nil {
		return err
	}
	err := unix.Mount(v.mapped(), target, "ext4", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "")
	if errors.Is(err, unix.EBUSY) {
		return nil // already mounted by an earlier run of this boot
	}
	if err != nil {
		return fmt.Errorf("mounting %s at %s: %w", v.mapped(), target, err)
	}
	return nil
}

// run executes a tool, feeding stdin (a key) through a pipe, never an
// argument or a file. Its output is returned in the error.
func run(ctx context.Context, stdin []byte, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 400 {
			msg = msg[:400] + "…"
		}
		if msg != "" {
			return fmt.Errorf("%s: %w: %s", name, err, msg)
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
