// Which local address a service listens on, from what a launcher can say once for every node:
// an IP literal, an interface name ("eth0"), or a subnet ("10.0.0.0/16") meaning "this host's
// address in that subnet" — the same forms Open MPI's *_if_include settings take, so one
// `--network` value places both MPI traffic and the control services on the same links.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace flotilla {

struct InterfaceAddress {
  std::string interface;  // "eth0"
  std::string address;    // "10.0.0.5" or "fe80::1"
  int family = 0;         // AF_INET or AF_INET6
};

// The addresses of this host's interfaces that are up (getifaddrs), in the order it lists them.
absl::StatusOr<std::vector<InterfaceAddress>> LocalInterfaceAddresses();

// `spec` resolved against `interfaces`: an IP literal is returned as it is; an interface name
// gives its first IPv4 address (else its first IPv6); "a.b.c.d/n" or "v6/n" gives the first
// address inside that subnet. NOT_FOUND names the spec and lists what the host has;
// INVALID_ARGUMENT for a malformed subnet.
absl::StatusOr<std::string> ResolveListenAddress(const std::string& spec,
                                                 const std::vector<InterfaceAddress>& interfaces);
// The same against this host's interfaces.
absl::StatusOr<std::string> ResolveListenAddress(const std::string& spec);

}  // namespace flotilla
