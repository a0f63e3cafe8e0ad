package strictjson

import (
	"errors"
	"strings"
	"testing"
)

type doc struct {
	AcceptMock bool     `json:"acceptMock"`
	Allowed    []string `json:"allowedMrtd"`
	Inner      *struct {
		Name string `json:"name"`
	} `json:"inner,omitempty"`
}

func TestUnmarshalRefuses(t *testing.T) {
	tests := map[string]string{
		"case variant of a known key":  `{"acceptMock": false, "acceptmock": true}`,
		"upper-case key":               `{"ACCEPTMOCK": true}`,
		"duplicate key":                `{"allowedMrtd": ["00"], "allowedMrtd": ["*"]}`,
		"duplicate key, nested object": `{"inner": {"name": "a", "name": "b"}}`,
		"unknown key":                  `{"acceptMock": true, "extra": 1}`,
		"unknown nested key":           `{"inner": {"Name": "a"}}`,
		"trailing object":              `{"acceptMock": false}{"acceptMock": true}`,
		"trailing garbage":             `{"acceptMock": false} x`,
		"invalid UTF-8":                "{\"allowedMrtd\": [\"\xff\"]}",
		"not JSON":                     `acceptMock`,
		"empty":                        ``,
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			var d doc
			if err := Unmarshal([]byte(in), &d); err == nil {
				t.Fatalf("Unmarshal(%q) = nil, want an error (decoded %+v)", in, d)
			}
		})
	}
}

func TestUnmarshalKnownSkipsOnlyUnknown(t *testing.T) {
	var d doc
	if err := UnmarshalKnown([]byte(`{"acceptMock": true, "publisherExtra": {"x": 1}}`), &d); err != nil || !d.AcceptMock {
		t.Fatalf("UnmarshalKnown with an unknown member: %+v, %v", d, err)
	}
	for _, in := range []string{`{"acceptMock": false, "acceptMock": true}`, `{"acceptMock": false, "acceptmock": true}`} {
		var d doc
		err := UnmarshalKnown([]byte(in), &d)
		if err == nil && d.AcceptMock {
			t.Errorf("UnmarshalKnown(%q) accepted a second spelling: %+v", in, d)
		}
		if strings.Contains(in, `"acceptMock": false, "acceptMock"`) && err == nil {
			t.Errorf("UnmarshalKnown(%q) accepted a duplicate", in)
		}
	}
}

func TestUnmarshalAccepts(t *testing.T) {
	var d doc
	if err := Unmarshal([]byte(" {\"acceptMock\": true, \"allowedMrtd\": [\"*\"], \"inner\": {\"name\": \"n\"}}\n"), &d); err != nil {
		t.Fatal(err)
	}
	if !d.AcceptMock || len(d.Allowed) != 1 || d.Inner == nil || d.Inner.Name != "n" {
		t.Fatalf("decoded %+v", d)
	}
}

func TestRead(t *testing.T) {
	var d doc
	if err := Read(strings.NewReader(`{"acceptMock": true}`), 20, &d); err != nil || !d.AcceptMock {
		t.Fatalf("Read at the limit: %+v, %v", d, err)
	}
	if err := Read(strings.NewReader(`{"acceptMock": true} `), 20, &d); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Read over the limit: %v, want ErrTooLarge", err)
	}
}

func FuzzUnmarshal(f *testing.F) {
	f.Add([]byte(`{"acceptMock": false, "acceptmock": true}`))
	f.Add([]byte(`{"allowedMrtd": ["00"], "inner": {"name": "x"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var d doc
		if Unmarshal(b, &d) == nil {
			// Whatever decodes strictly also decodes leniently to the same.
			var e doc
			if err := UnmarshalKnown(b, &e); err != nil {
				t.Fatalf("strict accepted what lenient refused: %v", err)
			}
		}
	})
}
