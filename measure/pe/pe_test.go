package pe

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Real EFI binaries from Debian: systemd-boot-efi (unsigned) and the
// signed kernel of linux-image-amd64 (with a certificate table).
func realImages(t testing.TB) map[string]string {
	imgs := map[string]string{}
	for _, p := range []string{
		"/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
		"/usr/lib/systemd/boot/efi/linuxx64.efi.stub",
	} {
		if _, err := os.Stat(p); err == nil {
			imgs[filepath.Base(p)] = p
		}
	}
	if ks, _ := filepath.Glob("/boot/vmlinuz-*"); len(ks) > 0 {
		imgs["kernel"] = ks[0]
	}
	if len(imgs) == 0 {
		t.Skip("no EFI binaries: apt-get install systemd-boot-efi linux-image-amd64")
	}
	return imgs
}

// TestAuthenticodeMatchesOsslsigncode: osslsigncode extract-data writes a
// PKCS#7 blob holding the SpcIndirectDataContent, whose last OCTET STRING
// is the image's Authenticode digest in the requested hash.
//
// osslsigncode hashes an unsigned image as it would sign it: zero-padded to
// a multiple of 8 bytes (the certificate table must start 8-byte aligned).
// Firmware hashes the file as it is (and pesign agrees, below), so for an
// unaligned unsigned image the comparison pads the input the same way. The
// signed kernel is compared as it is.
func TestAuthenticodeMatchesOsslsigncode(t *testing.T) {
	tool, err := exec.LookPath("osslsigncode")
	if err != nil {
		t.Skip("osslsigncode not installed (apt-get install osslsigncode)")
	}
	for name, path := range realImages(t) {
		t.Run(name, func(t *testing.T) {
			img, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := Parse(img)
			if err != nil {
				t.Fatal(err)
			}
			if f.certDirOff < 0 || f.certSize == 0 {
				img = append(img, make([]byte, (8-len(img)%8)%8)...)
			}
			got, err := AuthenticodeSHA384(img)
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "data.p7")
			cmd := exec.Command(tool, "extract-data", "-h", "sha384", "-in", path, "-out", out)
			if b, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("osslsigncode: %v\n%s", err, b)
			}
			p7, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(p7, append([]byte{0x04, 0x30}, got[:]...)) {
				t.Fatalf("digest %x not in osslsigncode's indirect data %x", got, p7)
			}
		})
	}
}

// TestAuthenticodeMatchesPesign checks the SHA-256 variant against pesign,
// which prints the Authenticode hash of an image ("hash: ...").
func TestAuthenticodeMatchesPesign(t *testing.T) {
	tool, err := exec.LookPath("pesign")
	if err != nil {
		t.Skip("pesign not installed (apt-get install pesign)")
	}
	re := regexp.MustCompile(`hash: ([0-9a-f]{64})`)
	for name, path := range realImages(t) {
		t.Run(name, func(t *testing.T) {
			img, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			f, err := Parse(img)
			if err != nil {
				t.Fatal(err)
			}
			got, err := f.AuthenticodeHash(crypto.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			b, err := exec.Command(tool, "-h", "-i", path).CombinedOutput()
			m := re.FindSubmatch(b)
			if err != nil || m == nil {
				t.Fatalf("pesign: %v\n%s", err, b)
			}
			if hex.EncodeToString(got) != string(m[1]) {
				t.Fatalf("sha256 %x, pesign %s", got, m[1])
			}
		})
	}
}

func TestSections(t *testing.T) {
	path := "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	img, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("%v (apt-get install systemd-boot-efi)", err)
	}
	f, err := Parse(img)
	if err != nil {
		t.Fatal(err)
	}
	s := f.Section(".sdmagic")
	if s == nil {
		t.Fatalf("no .sdmagic in %v", f.Sections)
	}
	if !strings.Contains(string(f.Data(s)), "systemd-stub") {
		t.Errorf(".sdmagic = %q", f.Data(s))
	}
}

func TestMalformed(t *testing.T) {
	good, err := os.ReadFile("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
	if err != nil {
		t.Skipf("%v (apt-get install systemd-boot-efi)", err)
	}
	mut := func(f func(b []byte)) []byte { b := bytes.Clone(good); f(b); return b }
	peOff := int(good[0x3c]) | int(good[0x3d])<<8
	cases := map[string]struct {
		img   []byte
		notPE bool
	}{
		"empty":           {img: nil, notPE: true},
		"text":            {img: []byte("hello, this is not an EFI image at all, but long enough........"), notPE: true},
		"no PE signature": {img: mut(func(b []byte) { b[peOff] = 'X' }), notPE: true},
		"pe offset huge":  {img: mut(func(b []byte) { b[0x3c], b[0x3d], b[0x3e] = 0xff, 0xff, 0xff })},
		"bad magic":       {img: mut(func(b []byte) { b[peOff+24] = 0x99 })},
		"many sections":   {img: mut(func(b []byte) { b[peOff+6], b[peOff+7] = 0xff, 0xff })},
		"truncated":       {img: good[:len(good)/2]},
		"headers only":    {img: good[:0x400]},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := AuthenticodeSHA384(c.img)
			var fe *FormatError
			switch {
			case err == nil:
				t.Fatal("no error")
			case c.notPE && !errors.Is(err, ErrNotPE):
				t.Fatalf("got %v, want ErrNotPE", err)
			case !c.notPE && !errors.As(err, &fe):
				t.Fatalf("got %v (%T), want *FormatError", err, err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("/usr/lib/systemd/boot/efi/linuxx64.efi.stub"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("MZ"))
	f.Fuzz(func(t *testing.T, img []byte) {
		p, err := Parse(img)
		if err != nil {
			return
		}
		for i := range p.Sections {
			_ = p.Data(&p.Sections[i])
		}
		_, _ = p.AuthenticodeSHA384()
	})
}

// TestAuthenticodePinned pins the digests of the exact Debian builds used
// while writing this package; they are also the digests OVMF itself logged
// when it loaded these files (measure/eventlog/testdata/ovmf-vtpm-boot.bin).
// Other builds are skipped.
func TestAuthenticodePinned(t *testing.T) {
	cases := map[string]struct{ path, sha256, authenticode string }{
		"systemd-boot 252.39-1~deb12u2": {
			"/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
			"10288fece5e90ce3ba3e7160f49695b022d648f7ef41774678db8c77774db167",
			"58ed6f28e9fb7dbb77e69c8f79653f47925412e4b0cc62713d57580891eaf734bde066f82405b23a1aeb388b4838418e",
		},
		"kernel 6.1.0-56-amd64 (6.1.192-2, signed)": {
			"/boot/vmlinuz-6.1.0-56-amd64",
			"26f2e57c99338feaf71c46fa4babdc7e1a6c115943002d109fdb746667104f5f",
			"e494e71ba795e8fc3edc1b3cab678c8c8782a6efe14d2d5a25155dc948b53f7d1dab088ff7005b7e6f9b0534738660e2",
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			img, err := os.ReadFile(c.path)
			if err != nil {
				t.Skipf("%v", err)
			}
			if s := sha256.Sum256(img); hex.EncodeToString(s[:]) != c.sha256 {
				t.Skipf("%s is another build", c.path)
			}
			d, err := AuthenticodeSHA384(img)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(d[:]) != c.authenticode {
				t.Errorf("authenticode %x, want %s", d, c.authenticode)
			}
		})
	}
}
