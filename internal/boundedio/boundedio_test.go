package boundedio

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, []byte("12345"), 0o600)
	if b, err := ReadFile(p, 5); err != nil || string(b) != "12345" {
		t.Fatalf("at the limit: %q %v", b, err)
	}
	if _, err := ReadFile(p, 4); err == nil || !strings.Contains(err.Error(), "4-byte limit") {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := ReadFile(p+"x", 4); !os.IsNotExist(err) {
		t.Fatalf("missing: %v", err)
	}
}
