package appliance

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// luks2Header builds the fixed part of a LUKS2 binary header (LUKS2 On-Disk
// Format Specification, 2.1) with the fields inspect reads.
func fakeLUKS2(label, uuid, subsystem string, version byte) []byte {
	b := make([]byte, luks2HeaderSize)
	copy(b, luksMagic)
	b[7] = version
	copy(b[24:72], label)
	copy(b[168:208], uuid)
	copy(b[208:256], subsystem)
	return b
}

func TestInspect(t *testing.T) {
	const id = "3f2a6c1e-7b4d-4c2a-9e1f-0a1b2c3d4e5f"
	withTail := func(head []byte, size int, tail []byte) []byte {
		d := make([]byte, size)
		copy(d, head)
		copy(d[size-len(tail):], tail)
		return d
	}
	cases := map[string]struct {
		disk  []byte
		state VolumeState
		uuid  string
	}{
		"blank":                    {make([]byte, 4<<20), Blank, ""},
		"blank small":              {make([]byte, 8192), Blank, ""},
		"sealed fleetbox volume":   {withTail(fakeLUKS2(luksLabel, id, subsystemSealed, 2), 4<<20, nil), Sealed, id},
		"first boot interrupted":   {withTail(fakeLUKS2(luksLabel, id, subsystemFormatting, 2), 4<<20, nil), Formatting, id},
		"someone else's LUKS2":     {withTail(fakeLUKS2("data", id, "", 2), 4<<20, nil), Foreign, id},
		"LUKS1":                    {withTail(fakeLUKS2("", id, subsystemSealed, 1), 4<<20, nil), Foreign, ""},
		"ext4 superblock":          {withTail(append(make([]byte, 1080), 0x53, 0xef), 4<<20, nil), Foreign, ""},
		"backup GPT at the end":    {withTail(nil, 4<<20, []byte("EFI PART")), Foreign, ""},
		"one byte in the first MB": {withTail(append(make([]byte, 700000), 1), 4<<20, nil), Foreign, ""},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			state, uuid, err := inspect(bytes.NewReader(c.disk))
			if err != nil || state != c.state || uuid != c.uuid {
				t.Fatalf("got %v %q %v, want %v %q", state, uuid, err, c.state, c.uuid)
			}
		})
	}
}

func FuzzInspect(f *testing.F) {
	f.Add(fakeLUKS2(luksLabel, "3f2a6c1e-7b4d-4c2a-9e1f-0a1b2c3d4e5f", subsystemSealed, 2))
	f.Add(make([]byte, 600))
	f.Add([]byte(luksMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		state, uuid, err := inspect(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if (state == Sealed || state == Formatting) && !bytes.HasPrefix(b, []byte(luksMagic)) {
			t.Fatalf("%v without a LUKS header", state)
		}
		if len(uuid) > 40 {
			t.Fatalf("uuid of %d bytes", len(uuid))
		}
	})
}

func FuzzParseImageConfig(f *testing.F) {
	f.Add([]byte(devConfig("http://kms:1")))
	f.Add([]byte(`{"profile":"prod","kms":{"publicKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="},"dataDevice":"/dev/vdb","node":{"listenAddrs":["x"]}}`))
	f.Add([]byte(`{"profile":"dev","profile":"prod"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseImageConfig(b)
		if err != nil {
			return
		}
		if c.Profile == ProfileProd && c.AllowMock {
			t.Fatal("a prod config that allows mock was accepted")
		}
		if len(c.KMS.Policy) == 0 && c.KMS.PublicKey == "" {
			t.Fatal("a config without a KMS trust anchor was accepted")
		}
	})
}

func FuzzParseOperational(f *testing.F) {
	f.Add([]byte(`{"kmsUrl":"http://10.0.2.2:8443","bootstrap":["/ip4/10.0.2.2/tcp/1/p2p/x"],"fleetJoin":["ab"]}`))
	f.Add([]byte(`{"kmsurl":"x"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := ParseOperational(b)
		if err != nil {
			return
		}
		// Accepted input re-encodes to an accepted document.
		if _, err := ParseOperational(mustJSON(t, o)); err != nil {
			t.Fatal(err)
		}
	})
}

// The real tools on a file-backed device: format, open, make the file
// system, mount, and the header inspect reads back. Needs root, cryptsetup
// and mkfs.ext4 (CI has them); skips otherwise.
func TestLUKSVolumeWithCryptsetup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (cryptsetup open, mount)")
	}
	for _, tool := range []string{"cryptsetup", "mkfs.ext4", "losetup"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "data.raw")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Skipf("no loop device here: %v", err)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", loop).Run() })
	mapper := "fleetbox-test-" + filepath.Base(dir)
	v := &LUKSVolume{Device: loop, Mapper: mapper}
	mnt := filepath.Join(dir, "mnt")
	t.Cleanup(func() {
		unix.Unmount(mnt, 0)
		exec.Command("cryptsetup", "close", mapper).Run()
	})
	ctx := context.Background()
	const id = "0b5e6f3a-1111-4222-8333-944455556666"
	key := bytes.Repeat([]byte{0x42}, 32)

	if st, _, err := v.Inspect(ctx); err != nil || st != Blank {
		t.Fatalf("new disk: %v %v", st, err)
	}
	if err := v.Format(ctx, key, id); err != nil {
		t.Fatal(err)
	}
	if st, uuid, err := v.Inspect(ctx); err != nil || st != Formatting || uuid != id {
		t.Fatalf("after luksFormat: %v %q %v", st, uuid, err)
	}
	if err := v.Open(ctx, key); err != nil {
		if strings.Contains(err.Error(), "Cannot initialize device-mapper") {
			t.Skipf("no device-mapper here (the QEMU end-to-end test runs this path in the guest): %v", err)
		}
		t.Fatal(err)
	}
	if err := v.MakeFS(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _, _ := v.Inspect(ctx); st != Sealed {
		t.Fatalf("after mkfs: %v", st)
	}
	if err := v.Mount(ctx, mnt); err != nil {
		t.Fatal(err)
	}
	secret := []byte("namespace 0123456789abcdef rows")
	if err := os.WriteFile(filepath.Join(mnt, "probe"), bytes.Repeat(secret, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	unix.Sync()
	if err := unix.Unmount(mnt, 0); err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("cryptsetup", "close", mapper).Run(); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(img)
	if bytes.Contains(raw, secret) {
		t.Fatal("plaintext on the raw device")
	}
	// The wrong key: ErrWrongKey, and the header is unchanged.
	if err := v.Open(ctx, bytes.Repeat([]byte{0x43}, 32)); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong key: %v", err)
	}
	raw2, _ := os.ReadFile(img)
	if !bytes.Equal(raw, raw2) {
		t.Fatal("a failed open changed the device")
	}
	if err := v.Open(ctx, key); err != nil {
		t.Fatal(err)
	}
	if err := v.Mount(ctx, mnt); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(mnt, "probe")); err != nil || !bytes.HasPrefix(b, secret) {
		t.Fatalf("reading back: %v", err)
	}
}
