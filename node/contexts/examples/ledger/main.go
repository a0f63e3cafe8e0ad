//go:build wasip1

// Command ledger is the second example application: balances that only
// move by valid transfers. Its methods refuse bad input (malformed JSON,
// unknown or equal accounts, non-positive amounts, overdrafts) with
// sdk.Fail, so the call fails with ErrRefused on the caller's node and
// no op is recorded.
//
//	init     {"balances": {"alice": 100, ...}}
//	transfer {"from": "alice", "to": "bob", "amount": 5} -> {"from": 95, "to": 5}
//	balance  {"account": "alice"}                       -> {"balance": 95} (a query)
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o ledger.wasm .
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/fleetbox/fleetbox/node/contexts/sdk"
)

func key(account string) []byte { return []byte("balance/" + account) }

func balance(account string) (uint64, bool) {
	v, ok := sdk.Get(key(account))
	if !ok || len(v) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(v), true
}

func setBalance(account string, b uint64) {
	sdk.Set(key(account), binary.BigEndian.AppendUint64(nil, b))
}

func decode(in []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(in))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("malformed input: %v", err)
	}
	return nil
}

//go:wasmexport init
func initialize() {
	sdk.Handle(func(in []byte) ([]byte, error) {
		var args struct {
			Balances map[string]uint64 `json:"balances"`
		}
		if err := decode(in, &args); err != nil {
			return nil, err
		}
		for a, b := range args.Balances {
			if a == "" {
				return nil, errors.New("empty account name")
			}
			setBalance(a, b)
		}
		return []byte("{}"), nil
	})
}

//go:wasmexport transfer
func transfer() {
	sdk.Handle(func(in []byte) ([]byte, error) {
		var t struct {
			From   string `json:"from"`
			To     string `json:"to"`
			Amount int64  `json:"amount"`
		}
		if err := decode(in, &t); err != nil {
			return nil, err
		}
		if t.Amount <= 0 {
			return nil, fmt.Errorf("amount %d: must be positive", t.Amount)
		}
		if t.From == t.To || t.To == "" {
			return nil, errors.New("from and to must be two different accounts")
		}
		from, ok := balance(t.From)
		if !ok {
			return nil, fmt.Errorf("unknown account %q", t.From)
		}
		if from < uint64(t.Amount) {
			return nil, fmt.Errorf("insufficient funds: %s has %d, transfer of %d", t.From, from, t.Amount)
		}
		to, _ := balance(t.To)
		setBalance(t.From, from-uint64(t.Amount))
		setBalance(t.To, to+uint64(t.Amount))
		sdk.Emit("transfer", in)
		return json.Marshal(map[string]uint64{"from": from - uint64(t.Amount), "to": to + uint64(t.Amount)})
	})
}

//go:wasmexport balance
func balanceOf() {
	sdk.Handle(func(in []byte) ([]byte, error) {
		var q struct {
			Account string `json:"account"`
		}
		if err := decode(in, &q); err != nil {
			return nil, err
		}
		b, ok := balance(q.Account)
		if !ok {
			return nil, fmt.Errorf("unknown account %q", q.Account)
		}
		return json.Marshal(map[string]uint64{"balance": b})
	})
}

func main() {}
