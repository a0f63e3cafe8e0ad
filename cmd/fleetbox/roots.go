package main

// Web PKI roots for HTTPS (Intel's PCS for collateral, a KMS behind TLS)
// where the system has none: the container image on Phala holds only the
// binary. They are used only when the system offers no roots, and being in
// the binary they are measured with it (the image digest in the compose
// file, the UKI in the appliance).
import _ "golang.org/x/crypto/x509roots/fallback"
