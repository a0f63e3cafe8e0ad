package attest_test

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fleetbox/fleetbox/attest"
	"github.com/fleetbox/fleetbox/attest/attesttest"
)

// Hex wrapped or spaced the way xxd -p, hexdump or a mail client prints it
// reads as the quote; before, it was read as raw bytes and failed with
// "quote version 13360 is not supported".
func TestQuoteFileHexWithWhitespace(t *testing.T) {
	ca := attesttest.NewCA(t)
	raw := ca.NewPlatform(t, attesttest.DefaultPlatform).Quote(t, attesttest.QuoteOptions{MRTD: attest.MRTD{7}})
	h := hex.EncodeToString(raw)
	wrap := func(n int, sep string) string {
		var b strings.Builder
		for i := 0; i < len(h); i += n {
			b.WriteString(h[i:min(i+n, len(h))])
			b.WriteString(sep)
		}
		return b.String()
	}
	for name, text := range map[string]string{
		"xxd -p (60 per line)": wrap(60, "\n"),
		"CRLF lines":           wrap(64, "\r\n"),
		"spaced bytes":         wrap(2, " "),
		"tabs and 0x":          "0x" + wrap(32, "\t"),
	} {
		t.Run(name, func(t *testing.T) {
			got, err := attest.DecodeQuoteFile([]byte(text))
			if err != nil || !bytes.Equal(got, raw) {
				t.Fatalf("decoded %d bytes, %v; want the %d-byte quote", len(got), err, len(raw))
			}
		})
	}
	// What is none of the forms says which forms were tried.
	p := filepath.Join(t.TempDir(), "q.txt")
	os.WriteFile(p, []byte("this is not a quote at all, not even close to one\n"), 0o600)
	_, err := attest.ReadQuoteFile(p)
	if err == nil || !strings.Contains(err.Error(), "read as raw bytes") || !strings.Contains(err.Error(), "xxd -p") {
		t.Fatalf("error %v does not say which forms were tried", err)
	}
}
